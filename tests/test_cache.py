"""The extraction cache on tiny random models: keys, hits without model work, resumption
from finished chunks, corrupt entries and chunks recomputed, and the per-entry lock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from autolayer import cache
from autolayer import extraction as ex
from autolayer.cache import CacheEntry
from autolayer.errors import CacheError, ConfigError
from autolayer.sources import transformer as tr

pytestmark = pytest.mark.usefixtures("one_thread")


def test_extract_caches_and_second_call_does_no_model_work(
    tiny_models, tiny_dataset, home, monkeypatch
):
    first = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert first.array.shape == (40, 5, 32) and not first.meta["cached"]

    def boom(*a, **k):
        raise AssertionError("model was loaded on a cache hit")

    monkeypatch.setattr(tr, "Backbone", boom)
    second = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert second.meta["cached"]
    np.testing.assert_array_equal(first.array, second.array)
    subset = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", layers=[-1, 1])
    np.testing.assert_array_equal(subset.array, first.array[:, [1, 4]])
    assert subset.layer(-1).shape == (40, 32)


def test_rows_come_from_a_whole_entry_or_are_cached_on_their_own(
    tiny_models, tiny_dataset, home, monkeypatch
):
    from autolayer.data import split_texts

    model, (_, texts) = str(tiny_models["bert"]), split_texts(str(tiny_dataset), "train")
    rows = np.array([3, 0, 17, 9])
    alone = ex.embed_texts(model, texts, rows=rows, layers=[1, 2])
    assert not alone.meta["cached"] and alone.meta["computed_rows"] == 4  # the rows only
    whole = ex.embed_texts(model, texts)
    np.testing.assert_allclose(alone.array, whole.array[rows][:, [1, 2]], atol=1e-5)

    def boom(*a, **k):
        raise AssertionError("model was loaded although the whole split is cached")

    monkeypatch.setattr(tr, "Backbone", boom)
    served = ex.embed_texts(model, texts, rows=[5, 2, 30], layers=[2])
    assert served.meta["cached"]
    np.testing.assert_array_equal(served.array, whole.array[[5, 2, 30]][:, [2]])


def test_cache_key_changes_with_pooling_and_max_length(tiny_models, tiny_dataset, home):
    model = str(tiny_models["bert"])
    a = ex.extract(model, str(tiny_dataset), "test")
    b = ex.extract(model, str(tiny_dataset), "test", pooling="cls")
    c = ex.extract(model, str(tiny_dataset), "test", max_length=4)
    assert not b.meta["cached"] and not c.meta["cached"]
    assert not np.allclose(a.array, b.array) and not np.allclose(a.array, c.array)


def test_interrupted_extraction_resumes_from_finished_chunks(tiny_models, tiny_dataset, home):
    model = str(tiny_models["llama"])
    seen = []

    def stop_in_third_chunk(n):
        seen.append(n)
        if sum(seen) > 16:  # during the third chunk: two are on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.extract(
            model,
            str(tiny_dataset),
            "train",
            chunk_size=8,
            batch_size=4,
            progress=stop_in_third_chunk,
        )
    resumed = ex.extract(model, str(tiny_dataset), "train", chunk_size=8, batch_size=4)
    assert resumed.meta["computed_rows"] == 40 - 16
    assert resumed.meta["timed_rows"] == 40  # what a text costs knows the first run's chunks
    assert resumed.meta["timed_seconds"] > resumed.meta["seconds"] > 0
    clean = ex.extract(
        model, str(tiny_dataset), "train", chunk_size=8, batch_size=4, cache_dir=home / "other"
    )
    np.testing.assert_array_equal(resumed.array, clean.array)


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupt_cache_entry_is_detected_and_recomputed(
    tiny_models, tiny_dataset, home, damage, caplog
):
    model = str(tiny_models["bert"])
    good = np.array(ex.extract(model, str(tiny_dataset), "train").array)
    [entry] = (home / "embeddings").iterdir()
    array_path = entry / "embeddings.npy"
    raw = bytearray(array_path.read_bytes())
    if damage == "flip":
        raw[-5] ^= 0xFF
        array_path.write_bytes(bytes(raw))
    elif damage == "truncate":
        array_path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        (entry / "meta.json").write_text("{not json")
    again = ex.extract(model, str(tiny_dataset), "train")
    assert not again.meta["cached"]
    assert "corrupt" in caplog.text
    np.testing.assert_array_equal(again.array, good)


def _interrupted_after_two_chunks(model: str, dataset, home, options: dict):
    """Start an extraction of ``dataset``'s train split in chunks of 8 rows and stop it
    while the third is computed; returns the cache entry's folder (two chunks on disk)."""
    seen = []

    def stop_in_third_chunk(n):
        seen.append(n)
        if sum(seen) > 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.extract(model, str(dataset), "train", progress=stop_in_third_chunk, **options)
    [entry] = (home / "embeddings").iterdir()
    return entry


def test_chunk_damaged_before_the_resume_is_recomputed_not_built_in(
    tiny_models, tiny_dataset, home, caplog
):
    model, options = str(tiny_models["llama"]), {"chunk_size": 8, "batch_size": 4}
    entry = _interrupted_after_two_chunks(model, tiny_dataset, home, options)
    chunk = entry / "chunks" / "000001.npy"
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 0xFF  # still a valid .npy of the right shape, with one wrong value
    chunk.write_bytes(bytes(raw))

    resumed = ex.extract(model, str(tiny_dataset), "train", **options)
    assert resumed.meta["computed_rows"] == 40 - 16 + 8  # the damaged chunk again
    assert "chunk 1" in caplog.text and "damaged" in caplog.text
    clean = ex.extract(model, str(tiny_dataset), "train", cache_dir=home / "other", **options)
    np.testing.assert_array_equal(resumed.array, clean.array)
    again = ex.extract(model, str(tiny_dataset), "train", **options)
    assert again.meta["cached"]
    np.testing.assert_array_equal(again.array, clean.array)


def test_chunks_without_checksums_are_recomputed_with_one_line_per_entry(
    tiny_models, tiny_dataset, home, caplog
):
    model, options = str(tiny_models["llama"]), {"chunk_size": 8, "batch_size": 4}
    entry = _interrupted_after_two_chunks(model, tiny_dataset, home, options)
    for checksum in (entry / "chunks").glob("*.sha256"):  # as an earlier version left them
        checksum.unlink()

    resumed = ex.extract(model, str(tiny_dataset), "train", **options)
    assert resumed.meta["computed_rows"] == 40
    about_chunks = [r.getMessage() for r in caplog.records if "chunk" in r.getMessage()]
    assert about_chunks == [
        f"cache entry {entry} has 2 chunks without a checksum (written by an earlier "
        "version): recomputing them"
    ]
    clean = ex.extract(model, str(tiny_dataset), "train", cache_dir=home / "other", **options)
    np.testing.assert_array_equal(resumed.array, clean.array)


def _lock_holder(home, ready, then: str) -> subprocess.Popen:
    """A child process that takes the cache lock of entry ``{'texts': 'x'}``, touches
    ``ready``, then runs the statement ``then`` while it holds the lock."""
    holder = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from autolayer.cache import CacheEntry\n"
        "with CacheEntry(Path(sys.argv[1]), {'texts': 'x'}).lock():\n"
        "    Path(sys.argv[2]).touch()\n"
        f"    {then}\n"
    )
    return subprocess.Popen([sys.executable, "-c", holder, str(home / "embeddings"), str(ready)])


def test_lock_left_by_a_process_that_is_gone_is_taken_at_once(home, tmp_path, caplog):
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    ready = tmp_path / "ready"
    child = _lock_holder(home, ready, "time.sleep(600)")
    try:
        _wait_for(lambda: ready.exists(), child, "the child to take the lock")
        with pytest.raises(CacheError, match=f"pid {child.pid} .*running"), entry.lock(timeout=0):
            pass  # it does hold the lock
        child.kill()  # SIGKILL: no cleanup of its own, its lock file and record stay
    finally:
        child.kill()
        child.wait()
    lock_file = entry.directory / ".lock"
    assert json.loads(lock_file.read_text())["pid"] == child.pid
    caplog.clear()
    with entry.lock(timeout=0):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert "waiting" not in caplog.text


def test_lock_held_by_a_live_process_names_it_then_gives_up_in_one_line(home, caplog):
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    who = f"pid {os.getpid()} on {socket.gethostname()}"
    # a second open file description conflicts, even in one process; timeout 0 gives up at
    # once, so the test takes no wall time
    with entry.lock(), pytest.raises(CacheError, match=who), entry.lock(timeout=0):
        pass
    [waiting] = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert f"waiting for pid {os.getpid()} on {socket.gethostname()}" in waiting
    assert "AUTOLAYER_LOCK_TIMEOUT" in waiting and "\n" not in waiting
    with entry.lock():  # released: taken again without waiting
        pass


class _FakeTime:
    """A clock that moves only when the waiter sleeps; each sleep lets the holder act."""

    def __init__(self, holder_acts) -> None:
        self.now = 0.0
        self.holder_acts = holder_acts

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.holder_acts(self.now)


def _hold(entry: CacheEntry):
    """The entry's lock taken through another open file description: it conflicts with
    ``entry.lock()`` as another process's lock would."""
    entry.directory.mkdir(parents=True, exist_ok=True)
    holder = open(entry.directory / ".lock", "a+")  # noqa: SIM115 (released by the test)
    fcntl.flock(holder, fcntl.LOCK_EX)
    return holder


def _beat(entry: CacheEntry, now: float) -> None:
    """What a working holder's heartbeat does: refresh the lock file's mtime."""
    stamp = int(now * 1e9)
    os.utime(entry.directory / ".lock", ns=(stamp, stamp))


def test_lock_waits_as_long_as_its_holder_makes_progress(home, monkeypatch):
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    holder = _hold(entry)

    def works_for_100_s(now: float) -> None:  # ten times the timeout
        if now >= 100:
            fcntl.flock(holder, fcntl.LOCK_UN)
        else:
            _beat(entry, now)

    clock = _FakeTime(works_for_100_s)
    monkeypatch.setattr(cache, "time", clock)
    try:
        with entry.lock(timeout=10):
            assert clock.now >= 100
    finally:
        holder.close()


def test_lock_gives_up_once_its_holder_stops_making_progress(home, monkeypatch):
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    holder = _hold(entry)

    def works_for_30_s_then_stops(now: float) -> None:  # as Ctrl-Z would
        if now <= 30:
            _beat(entry, now)

    clock = _FakeTime(works_for_30_s_then_stops)
    monkeypatch.setattr(cache, "time", clock)
    try:
        with pytest.raises(CacheError, match="no progress for 10 s"), entry.lock(timeout=10):
            pass
    finally:
        holder.close()
    assert 40 <= clock.now <= 40 + cache.LOCK_POLL_SECONDS


def test_a_lock_holder_refreshes_its_lock_file_while_it_holds_it(home, monkeypatch):
    monkeypatch.setattr(cache, "LOCK_HEARTBEAT_SECONDS", 0.01)
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    lock_file = entry.directory / ".lock"
    with entry.lock():
        taken = lock_file.stat().st_mtime_ns
        for _ in range(1000):
            time.sleep(0.01)
            if lock_file.stat().st_mtime_ns != taken:
                break
        else:
            pytest.fail("the lock file was not refreshed in 10 s")
    assert not [t for t in threading.enumerate() if t.name == cache.HEARTBEAT_THREAD]


def test_lock_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("AUTOLAYER_LOCK_TIMEOUT", raising=False)
    assert cache.lock_timeout() == cache.DEFAULT_LOCK_TIMEOUT
    monkeypatch.setenv("AUTOLAYER_LOCK_TIMEOUT", "2.5")
    assert cache.lock_timeout() == 2.5


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_lock_timeout_must_be_seconds(home, monkeypatch, value):
    monkeypatch.setenv("AUTOLAYER_LOCK_TIMEOUT", value)
    with pytest.raises(ConfigError, match="AUTOLAYER_LOCK_TIMEOUT"):
        cache.lock_timeout()


def test_lock_held_by_a_stopped_process_says_it_is_stopped(home, tmp_path, caplog):
    entry = CacheEntry(home / "embeddings", {"texts": "x"})
    ready = tmp_path / "ready"
    child = _lock_holder(home, ready, "os.kill(os.getpid(), signal.SIGSTOP)  # as Ctrl-Z would")
    try:
        _wait_for(lambda: ready.exists() and _stopped(child.pid), child, "the child to stop")
        with pytest.raises(CacheError, match=f"pid {child.pid} .*stopped"), entry.lock(timeout=0):
            pass
    finally:
        child.kill()
        child.wait()
    assert f"waiting for pid {child.pid}" in caplog.text


def _wait_for(condition, child: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` (the child's import and lock take a few seconds) for up to 30 s."""
    for _ in range(600):
        if condition():
            return
        assert child.poll() is None, "the lock holder ended early"
        time.sleep(0.05)
    pytest.fail(f"waited 30 s for {what}")


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in "Tt"
