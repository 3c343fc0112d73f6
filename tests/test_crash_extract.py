"""Crash safety of `autolayer extract`: SIGKILL a run at various points, run the same command
again, and the result must be bit-identical to an uninterrupted run, with every chunk that was
finished before the kill reused, not recomputed.

The killed runs are real `autolayer extract` processes started by a small driver script. It
only lowers the chunk size (the CLI has no option for it: 512 rows would need thousands of
texts to give several chunks), can pause at a named point (model loaded, a chunk renamed
into place) until the test SIGKILLs it, so that no kill depends on timing, can slow each
batch down for the one deliberately timed kill, and can SIGKILL its own process at one exact
point of the on-disk protocol (just before or after a given file is renamed into place). The
reruns go through the CLI in-process, counting the rows the model really computes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autolayer import extraction as ex
from autolayer.cli import main
from autolayer.sources import transformer as tr
from tests.conftest import REPO, WORDS, write_jsonl

N_TEXTS = 256
CHUNK = 32
N_CHUNKS = N_TEXTS // CHUNK
BATCH = 8
BATCH_DELAY = 0.05  # seconds per batch in the timed-kill children: a chunk takes >= 0.2 s
DEADLINE = 60.0
SEED = int(os.environ.get("AUTOLAYER_CRASH_SEED", "0"))  # change it to try other kill times
CHUNK_NAME = re.compile(r"\d{6}\.npy")
FINISHED = {".lock", "embeddings.npy", "meta.json"}
FORWARD = tr.Backbone.forward_pooled

DRIVER = """\
import os, signal, sys, time

import torch

torch.set_num_threads(1)

from autolayer import extraction
from autolayer.sources import transformer

extraction.embed_texts.__kwdefaults__["chunk_size"] = int(os.environ["CRASH_CHUNK_SIZE"])
delay = float(os.environ.get("CRASH_BATCH_DELAY", "0"))
if delay:
    forward = transformer.Backbone.forward_pooled

    def slow_forward(self, *args, **kwargs):
        time.sleep(delay)
        return forward(self, *args, **kwargs)

    transformer.Backbone.forward_pooled = slow_forward

pause_at = os.environ.get("CRASH_PAUSE_AT")  # "model" or a file name: wait there for the kill


def pause(point):
    if point == pause_at:
        open(os.environ["CRASH_PAUSED"], "w").close()
        while True:
            signal.pause()


if pause_at == "model":
    init = transformer.Backbone.__init__

    def init_then_pause(self, *args, **kwargs):
        init(self, *args, **kwargs)
        pause("model")

    transformer.Backbone.__init__ = init_then_pause
elif pause_at:
    replace_file = os.replace

    def replace_then_pause(src, dst, *args, **kwargs):
        replace_file(src, dst, *args, **kwargs)
        pause(os.path.basename(dst))

    os.replace = replace_then_pause

kill_at = os.environ.get("CRASH_KILL_AT")  # "<file name>:before" or "<file name>:after"
if kill_at:
    target, when = kill_at.split(":")
    replace = os.replace

    def replace_then_maybe_die(src, dst, *args, **kwargs):
        hit = os.path.basename(dst) == target
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst, *args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die

from autolayer.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The in-process reruns pass --threads 1, which would otherwise stick for later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crash_dataset(tmp_path_factory) -> Path:
    """N_TEXTS unique texts of 1-20 words (varied lengths: the length order is non-trivial)."""
    rng = random.Random(1)
    texts: dict[str, None] = {}
    while len(texts) < N_TEXTS:
        texts[" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))] = None
    rows = [{"text": t, "label": "ab"[len(t.split()) % 2]} for t in texts]
    folder = tmp_path_factory.mktemp("crash") / "data"
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:8])
    return folder


def _args(model: Path, dataset: Path, cache_dir: Path, output: Path) -> list[str]:
    return [
        "extract",
        "-m",
        str(model),
        "-d",
        str(dataset),
        "--threads",
        "1",
        "--batch-size",
        str(BATCH),
        "--cache-dir",
        str(cache_dir),
        "-o",
        str(output),
    ]


def _start(tmp: Path, args: list[str], **env: str) -> subprocess.Popen:
    """Start the driver on ``args``; its output goes to files (no pipe can fill and block)."""
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "AUTOLAYER_HOME": str(tmp / "child-home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CRASH_CHUNK_SIZE": str(CHUNK),
        **env,
    }
    log = (tmp / "child.log").open("ab")
    with log:
        return subprocess.Popen(
            [sys.executable, str(driver), *args], env=child_env, stdout=log, stderr=log
        )


def _log(tmp: Path) -> str:
    path = tmp / "child.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _wait(proc: subprocess.Popen, tmp: Path) -> int:
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"extraction child did not finish in {DEADLINE:.0f} s:\n{_log(tmp)}")


def _entry(cache_dir: Path) -> Path | None:
    entries = [p for p in cache_dir.iterdir() if p.is_dir()] if cache_dir.exists() else []
    assert len(entries) <= 1, entries
    return entries[0] if entries else None


def _chunks(cache_dir: Path) -> dict[int, Path]:
    """Finished chunk files by index (temp files of a chunk being written are not counted)."""
    entry = _entry(cache_dir)
    folder = entry / "chunks" if entry else None
    if folder is None or not folder.is_dir():
        return {}
    return {int(p.name[:6]): p for p in folder.iterdir() if CHUNK_NAME.fullmatch(p.name)}


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE)


@pytest.fixture(scope="module")
def reference(tiny_models, crash_dataset, tmp_path_factory) -> dict:
    """One uninterrupted run of the same command, and the row order chunks are written in."""
    from transformers import AutoTokenizer

    from autolayer.data import load_dataset

    model = tiny_models["llama"]
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out.npy"
    proc = _start(tmp, _args(model, crash_dataset, tmp / "cache", out))
    assert _wait(proc, tmp) == 0, _log(tmp)
    array = np.load(out)
    assert array.shape == (N_TEXTS, 5, 32)
    entry = _entry(tmp / "cache")
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["computed_rows"] == N_TEXTS
    np.testing.assert_array_equal(np.load(entry / "embeddings.npy"), array)

    texts = load_dataset(crash_dataset).split("train").texts
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    ids = tokenizer(list(texts), truncation=True, max_length=256)["input_ids"]
    return {"array": array, "order": tr.length_order(ids), "model": model}


def _check_chunks(chunks: dict[int, Path], reference: dict, *, prefix: bool = True) -> int:
    """Chunks left by a killed run are a prefix, each exactly the reference's rows; → rows.

    (Not a prefix once the finished run is deleting them: ``prefix=False`` then.)
    """
    if prefix:
        assert sorted(chunks) == list(range(len(chunks))), sorted(chunks)
    rows = 0
    for index, path in chunks.items():
        want = reference["array"][reference["order"][index * CHUNK : (index + 1) * CHUNK]]
        got = np.load(path)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=f"chunk {index} differs")
        rows += len(got)
    return rows


def _rerun(monkeypatch, reference: dict, dataset: Path, cache_dir: Path, out: Path) -> int:
    """The same command again, in-process; → rows the model actually computed."""
    monkeypatch.setitem(ex.embed_texts.__kwdefaults__, "chunk_size", CHUNK)
    computed = []

    def counting(self, ids, *args, **kwargs):
        computed.append(len(ids))
        return FORWARD(self, ids, *args, **kwargs)

    monkeypatch.setattr(tr.Backbone, "forward_pooled", counting)
    assert main(_args(reference["model"], dataset, cache_dir, out)) == 0
    return sum(computed)


def _check_finished(entry: Path, reference: dict, out: Path) -> dict:
    """The rerun's output and cache entry hold exactly the uninterrupted run's array."""
    assert np.array_equal(np.load(out), reference["array"]), "rerun differs from reference"
    assert np.array_equal(np.load(entry / "embeddings.npy"), reference["array"])
    return json.loads((entry / "meta.json").read_text())


def _check_nothing_left_behind(entries: list[Path]) -> None:
    """Only the lock, array and meta remain: no chunks, no temp array of a killed assembly."""
    left = {str(e): sorted({p.name for p in e.iterdir()} - FINISHED) for e in entries}
    left = {e: names for e, names in left.items() if names}
    assert not left, f"chunks or temp files left behind: {left}"


# ---------------------------------------------------------------------------------------------
# Kills at chunk boundaries and at a random time, while chunks are being computed


KILLS = {
    # name: (where the child pauses for the kill, or None for a timed kill after one chunk)
    "while loading the model": "model",
    "after the first chunk": "000000.npy",
    "after half the chunks": f"{N_CHUNKS // 2 - 1:06d}.npy",
    f"at a random time (seed {SEED})": None,
}
EXTRA = random.Random(SEED).uniform(0.0, 1.6)  # the timed kill's delay after chunk 0


@pytest.mark.parametrize("point", list(KILLS))
def test_sigkill_mid_extraction_then_rerun_resumes_bit_identical(
    point, reference, crash_dataset, tmp_path, home, monkeypatch
):
    pause_at = KILLS[point]
    cache, paused = tmp_path / "cache", tmp_path / "paused"
    env = {"CRASH_PAUSE_AT": pause_at, "CRASH_PAUSED": str(paused)} if pause_at else {}
    proc = _start(
        tmp_path,
        _args(reference["model"], crash_dataset, cache, tmp_path / "killed.npy"),
        CRASH_BATCH_DELAY=str(BATCH_DELAY),
        **env,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not (paused.exists() if pause_at else len(_chunks(cache)) >= 1):
            if proc.poll() is not None:
                pytest.fail(f"child ended ({proc.returncode}) before the kill:\n{_log(tmp_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"child never reached {point!r} in {DEADLINE:.0f} s:\n{_log(tmp_path)}")
            time.sleep(0.002)
        if not pause_at:
            time.sleep(EXTRA)
        _sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_chunks = 0 if pause_at in (None, "model") else int(pause_at.split(".")[0]) + 1
    random_point = point.startswith("at a random time")
    # only a random kill may come too late, when the child has already exited normally
    assert proc.returncode in ((-signal.SIGKILL, 0) if random_point else (-signal.SIGKILL,))

    entry = _entry(cache)
    finished_before = (entry / "meta.json").exists()
    chunks = _chunks(cache)
    reused = _check_chunks(chunks, reference, prefix=not finished_before)
    if not random_point:
        # the kill landed where it was aimed: mid-run, nothing final written yet
        assert not finished_before and not (entry / "embeddings.npy").exists()
        assert wait_chunks <= len(chunks) < N_CHUNKS
    assert not (tmp_path / "killed.npy").exists() or finished_before

    out = tmp_path / "resumed.npy"
    computed = _rerun(monkeypatch, reference, crash_dataset, cache, out)
    meta = _check_finished(entry, reference, out)
    if finished_before:  # the random kill came after the end: a plain cache hit
        assert computed == 0
    else:
        assert computed == N_TEXTS - reused, "finished chunks were recomputed"
        assert meta["computed_rows"] == N_TEXTS - reused
    assert _rerun(monkeypatch, reference, crash_dataset, cache, out) == 0  # now a cache hit
    _check_finished(entry, reference, out)
    _check_nothing_left_behind([entry])


# ---------------------------------------------------------------------------------------------
# Kills at exact points of the protocol: while a chunk is renamed into place, and during the
# final assembly (before the array is renamed, between array and meta, before chunk cleanup)


@pytest.mark.parametrize(
    "kill_at",
    ["000002.npy:before", "embeddings.npy:before", "embeddings.npy:after", "meta.json:after"],
)
def test_sigkill_at_exact_protocol_points_never_yields_a_wrong_array(
    kill_at, reference, crash_dataset, tmp_path, home, monkeypatch
):
    cache = tmp_path / "cache"
    proc = _start(
        tmp_path,
        _args(reference["model"], crash_dataset, cache, tmp_path / "killed.npy"),
        CRASH_KILL_AT=kill_at,
    )
    assert _wait(proc, tmp_path) == -signal.SIGKILL, _log(tmp_path)
    entry = _entry(cache)
    names = {p.name for p in entry.iterdir()}
    chunks = _chunks(cache)
    reused = _check_chunks(chunks, reference)
    temps = [n for n in names if n.startswith(".embeddings.npy.")]

    if kill_at == "000002.npy:before":
        assert sorted(chunks) == [0, 1] and "embeddings.npy" not in names
        assert any(p.name.startswith(".000002.npy.") for p in (entry / "chunks").iterdir())
    elif kill_at == "embeddings.npy:before":  # assembled into a temp file, never renamed
        assert len(chunks) == N_CHUNKS and temps and "embeddings.npy" not in names
    elif kill_at == "embeddings.npy:after":  # a complete array but no meta: unfinished
        assert len(chunks) == N_CHUNKS and "embeddings.npy" in names and "meta.json" not in names
    else:  # finished, but the chunks were not removed yet
        assert len(chunks) == N_CHUNKS and {"embeddings.npy", "meta.json"} <= names
    assert "meta.json" not in names or kill_at == "meta.json:after"

    variants = {"as left": cache}
    if kill_at == "000002.npy:before":
        # a torn chunk file (as a writer without temp file + rename would leave) is not reused
        torn = tmp_path / "torn-chunk" / entry.name
        shutil.copytree(entry, torn)
        path = torn / "chunks" / "000001.npy"
        path.write_bytes(path.read_bytes()[:300])
        variants["torn chunk 1"] = torn.parent
    if kill_at == "embeddings.npy:after":
        # a truncated final array without meta (a torn write) is never used as it is
        torn = tmp_path / "torn-array" / entry.name
        shutil.copytree(entry, torn)
        path = torn / "embeddings.npy"
        path.write_bytes(path.read_bytes()[:1000])
        variants["truncated array"] = torn.parent

    for name, cache_dir in variants.items():
        out = tmp_path / f"{name}.npy"
        computed = _rerun(monkeypatch, reference, crash_dataset, cache_dir, out)
        meta = _check_finished(cache_dir / entry.name, reference, out)
        want = N_TEXTS - reused + (CHUNK if name == "torn chunk 1" else 0)
        if kill_at == "meta.json:after":
            assert computed == 0  # a cache hit
        else:
            assert computed == want, f"{name}: finished chunks were recomputed"
            assert meta["computed_rows"] == want
    _check_nothing_left_behind([cache_dir / entry.name for cache_dir in variants.values()])


# ---------------------------------------------------------------------------------------------
# Resuming with another chunk size (possible from the Python API, or if the default changes)


def test_rerun_with_another_chunk_size_never_reuses_mismatched_chunks(
    reference, crash_dataset, tmp_path
):
    from autolayer.data import load_dataset

    texts = load_dataset(crash_dataset).split("train").texts[:40]
    model = str(reference["model"])
    seen = []

    def stop_in_fourth_chunk(n):  # chunks 0-2 (8 rows each) are on disk when it stops
        seen.append(n)
        if sum(seen) > 24:
            raise KeyboardInterrupt

    options = {"batch_size": 4, "threads": 1}
    with pytest.raises(KeyboardInterrupt):
        ex.embed_texts(
            model, texts, chunk_size=8, cache_dir=tmp_path / "a", progress=stop_in_fourth_chunk
        )
    # with chunks of 16, chunk 2 holds the last 8 rows: the same shape as the stale chunk 2
    resumed = ex.embed_texts(model, texts, chunk_size=16, cache_dir=tmp_path / "a", **options)
    clean = ex.embed_texts(model, texts, chunk_size=16, cache_dir=tmp_path / "b", **options)
    np.testing.assert_array_equal(resumed.array, clean.array)


# ---------------------------------------------------------------------------------------------
# A resumed extraction says so (its progress starts part way)


def test_a_resumed_extraction_says_how_many_rows_it_keeps(tiny_models, tmp_path, caplog):
    texts = [f"{WORDS[i % len(WORDS)]} text number {i}" for i in range(40)]
    model, cache = str(tiny_models["bert"]), tmp_path / "cache"
    seen = []

    def stop_in_fourth_chunk(n):  # chunks 0-2 (8 rows each) are on disk when it stops
        seen.append(n)
        if sum(seen) > 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.embed_texts(model, texts, chunk_size=8, cache_dir=cache, progress=stop_in_fourth_chunk)
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]  # a first run
    caplog.clear()
    ex.embed_texts(model, texts, chunk_size=8, cache_dir=cache)
    said = [r for r in caplog.records if r.getMessage().startswith("resuming cache entry ")]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert said[0].getMessage().endswith(": 24 of 40 rows already embedded")
    caplog.clear()
    ex.embed_texts(model, texts, chunk_size=8, cache_dir=cache)  # a cache hit resumes nothing
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]
