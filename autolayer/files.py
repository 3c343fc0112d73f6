"""Writing files safely: atomically, with the user's permissions, never over someone else's.

Every file autolayer writes goes through here, so three promises hold everywhere: a reader
sees the old content or the new, never a part (temp file + rename); files get the mode the
user's umask gives (``mkstemp``/``mkdtemp`` alone would make them 0600/0700); and a path's
problems (a file where a folder should be, a read-only folder, the input itself) are found
*before* the work that would write it, not after an hour of extraction.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from autolayer.errors import ConfigError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def user_mode(path: Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: Path, write: Callable[[str], object], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` then move the temp file over ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        user_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes durably (fsync) so readers see the old content or the new, never a part."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")


def temp_dir(target: Path) -> Path:
    """A new folder beside ``target`` (same file system, so it can be renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    user_mode(tmp, directory=True)
    return tmp


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, in one line, if ``path`` cannot be written later (checked before the work).

    Creates no file and no folder: the nearest existing ancestor must be a writable folder.
    """
    path = Path(path).expanduser()
    if path.is_dir() and not what.endswith("folder"):
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a folder")
    if what.endswith("folder") and path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a file")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {what} {str(path)!r}: permission denied")
    return path


# What each kind of output file autolayer writes looks like: an existing file at an output
# path is replaced only when it is recognisably one of autolayer's (an earlier run's).
PNG_MARK = b"autolayer"  # in a PNG's text chunk ("Software"), written by report's plots


def _head(path: Path, n: int = 4096) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _is_config(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "models" in data


def _is_json_of(path: Path, keys: tuple[str, ...]) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    first = data[0] if isinstance(data, list) and data else data
    return isinstance(first, dict) and all(k in first for k in keys)


def _is_predictions(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
        except Exception:  # noqa: BLE001 - anything unreadable is not ours
            return False
        return names[:1] == ["row"] and "label" in names
    try:
        first = _head(path).decode("utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return False
    if suffix in (".csv", ".tsv"):
        return first.startswith(("row,", "row\t"))
    return first.startswith('{"row": ')


def _is_array(path: Path) -> bool:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.ndim == 3 and array.dtype == np.float32


OURS: dict[str, Callable[[Path], bool]] = {
    "config": _is_config,
    "predictions": _is_predictions,
    "array": _is_array,
    "scores": lambda p: _is_json_of(p, ("model", "layers")),
    "complementarity": lambda p: _is_json_of(p, ("models", "matrix")),
    "plot": lambda p: _head(p, 8)[:4] == b"\x89PNG" and PNG_MARK in _head(p, 1 << 16),
}


def check_output(path: str | os.PathLike, kind: str) -> Path:
    """An output file that can be written now and later: a new path, or an existing file
    that an earlier autolayer run wrote (of the same ``kind``); anything else — the input
    data, a study database, someone's notes — is refused, never overwritten."""
    path = check_writable(path, kind)
    if path.exists() and not OURS[kind](path):
        raise ConfigError(
            f"{str(path)!r} exists and is not {'an' if kind[0] in 'aeiou' else 'a'} {kind} file "
            "autolayer wrote; choose another "
            "name (autolayer never overwrites files it did not write)"
        )
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (symlinks and ``./`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_owned_folder(
    directory: Path,
    markers: Iterable[str],
    ours: Iterable[str],
    *,
    overwrite: bool,
    what: str,
) -> None:
    """Refuse a folder autolayer may not replace; pass a missing, empty or own folder.

    A folder is autolayer's when it holds every one of ``markers`` and nothing but the
    ``ours`` files: ``overwrite`` lets such a folder be replaced. Anything else (the current
    directory, a folder of the user's files, a lone ``config.yaml`` of theirs) is never
    touched, whatever the flags.
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"cannot write {what} {str(directory)!r}: a file of that name exists")
    found = sorted(p.name for p in directory.iterdir())
    if not found:
        return
    foreign = [name for name in found if name not in set(ours)]
    if foreign or not set(markers) <= set(found):
        shown = ", ".join(foreign[:3] or found[:3]) + (" …" if len(foreign) > 3 else "")
        raise ConfigError(
            f"{str(directory)!r} exists and holds files autolayer did not write ({shown}); "
            f"choose a new or empty folder for the {what}"
        )
    if not overwrite:
        raise ConfigError(
            f"{str(directory)!r} already holds an autolayer {what}; pass --overwrite to "
            "replace it, or choose another folder"
        )


def replace_folder(tmp: Path, directory: Path, ours: Iterable[str], last: str) -> None:
    """Move the finished ``tmp`` folder's files to ``directory``.

    A new folder is renamed into place whole (atomic). An existing one (empty, or checked
    to be autolayer's by :func:`check_owned_folder`) keeps its inode — it may be the shell's
    current directory — and gets the new files one rename each, ``last`` (the file that
    marks a complete folder) last; own files the new set lacks are removed first.
    """
    if not directory.exists():
        os.replace(tmp, directory)
        return
    new = {p.name for p in tmp.iterdir()}
    for name in set(ours) - new:
        (directory / name).unlink(missing_ok=True)
    for name in sorted(new - {last}) + [last]:
        os.replace(tmp / name, directory / name)
    tmp.rmdir()
