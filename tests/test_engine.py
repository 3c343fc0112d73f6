"""Extraction on Ray (autolayer.engine), on one local Ray started for the module.

The tiny encoder's chunks are computed by Ray actors into the cache entry the local path
writes: the same array bit for bit (one thread each side), resumable and fault tolerant
(an actor killed mid-run, the driver killed and run again), and a clear line when Ray is
missing or its address cannot be reached. Chunks of 8 rows over 40 texts: 5 chunks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from autolayer import extraction as ex
from autolayer.errors import ConfigError
from autolayer.options import Options
from autolayer.sources import FeatureSource
from autolayer.sources import transformer as tr
from tests.conftest import REPO, WORDS, one_error_line, run, write_jsonl

CHUNK, BATCH = 8, 4
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 11)) for i in range(40)]
SETTINGS = {"chunk_size": CHUNK, "batch_size": BATCH, "threads": 1}
DEADLINE = 120.0  # seconds the killed driver may take to reach its first chunk

# The driver that is killed: it joins the module's Ray, and stops for good once it has
# recorded its first finished chunk, so the kill finds at least one chunk on disk.
DRIVER = """\
import json, os, signal, sys

from autolayer import cache, extraction

write_timing = cache.CacheEntry.write_chunk_timing


def stop_after_first_chunk(self, timing):
    write_timing(self, timing)
    open(os.environ["PAUSED"], "w").close()
    while True:
        signal.pause()


cache.CacheEntry.write_chunk_timing = stop_after_first_chunk
model, cache_dir, address = sys.argv[1:]
texts = json.loads(os.environ["TEXTS"])
extraction.embed_texts(
    model, texts, chunk_size=8, batch_size=4, threads=1, cache_dir=cache_dir,
    engine="ray", ray_address=address, ray_actors=1,
)
"""


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs for the module's tests, shut down after them (unless it was up)."""
    ray = pytest.importorskip("ray")
    ours = not ray.is_initialized()
    if ours:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    yield ray
    if ours:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory) -> np.ndarray:
    """The tiny encoder's features of ``TEXTS``, extracted here with one thread."""
    threads = torch.get_num_threads()
    cache = tmp_path_factory.mktemp("reference")
    try:
        emb = ex.embed_texts(str(tiny_models["bert"]), TEXTS, cache_dir=cache, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    return np.array(emb.array)


@pytest.fixture()
def no_model_here(monkeypatch):
    """This process (the driver) may tokenize but not run a model: the actors do."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("the driver ran the model")

    monkeypatch.setattr(tr.Backbone, "forward_pooled", refuse)


def _autolayer_actors(ray) -> list[str]:
    return [name for name in ray.util.list_named_actors() if name.startswith("autolayer-")]


def test_ray_fills_the_entry_the_local_path_reads_with_the_same_array(
    local_ray, tiny_models, reference, tmp_path, capsys, monkeypatch, one_thread, no_model_here
):
    model, cache = str(tiny_models["bert"]), tmp_path / "cache"
    dataset = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    monkeypatch.setitem(ex.embed_texts.__kwdefaults__, "chunk_size", CHUNK)
    code, _, err = run(
        capsys,
        *("extract", "-m", model, "-d", dataset, "--batch-size", BATCH, "--threads", 1),
        *("--engine", "ray", "--ray-actors", 2, "--cache-dir", cache, "-o", tmp_path / "x.npy"),
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), reference)
    assert _autolayer_actors(local_ray) == []  # none outlives its extraction

    seen = []  # a later local call: a cache hit (the driver runs no model)
    again = ex.embed_texts(model, TEXTS, cache_dir=cache, progress=seen.append, **SETTINGS)
    assert again.meta["cached"] and again.meta["timed_rows"] == len(TEXTS) and seen == []
    np.testing.assert_array_equal(again.array, reference)


def test_an_actor_killed_mid_run_is_restarted_and_its_chunk_retried(
    local_ray, tiny_models, reference, tmp_path, one_thread, no_model_here
):
    seen = []

    def kill_the_actor_at_the_first_chunk(rows: int) -> None:
        # the pool has already handed the actor its next chunk: that call is cut short
        seen.append(rows)
        if len(seen) == 1:
            [name] = _autolayer_actors(local_ray)
            local_ray.kill(local_ray.get_actor(name), no_restart=False)

    emb = ex.embed_texts(
        str(tiny_models["bert"]),
        TEXTS,
        cache_dir=tmp_path / "cache",
        progress=kill_the_actor_at_the_first_chunk,
        engine="ray",
        ray_actors=1,
        **SETTINGS,
    )
    assert seen == [CHUNK] * 5 and emb.meta["computed_rows"] == len(TEXTS)
    np.testing.assert_array_equal(emb.array, reference)


def test_a_killed_driver_run_again_resumes_at_its_missing_chunks(
    local_ray, tiny_models, reference, tmp_path, caplog, one_thread
):
    model, cache, paused = str(tiny_models["bert"]), tmp_path / "cache", tmp_path / "paused"
    address = local_ray.get_runtime_context().gcs_address
    env = {**os.environ, "PAUSED": str(paused), "TEXTS": json.dumps(TEXTS), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "driver.log"  # a file, not a pipe: a full pipe would stall the driver
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, model, str(cache), address],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while not paused.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused.exists(), log.read_text()[-2000:]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    [entry] = cache.iterdir()
    assert not (entry / "meta.json").exists() and list((entry / "chunks").glob("*.npy"))

    emb = ex.embed_texts(model, TEXTS, cache_dir=cache, engine="ray", ray_actors=1, **SETTINGS)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert len(said) == 1 and 0 < emb.meta["computed_rows"] < len(TEXTS)
    np.testing.assert_array_equal(emb.array, reference)


class _Counts(FeatureSource):
    """A dense source of autolayer's users' own (words per text): no actor can rebuild it."""

    kind, identity, n_states, width = "word-total", "word-total-1", 1, 1

    def embed(self, texts, layers, **settings):
        return np.array([[[len(t.split())]] for t in texts], dtype=np.float32)

    def parameters(self, layer: int) -> int:
        return 0


def test_a_source_no_actor_can_rebuild_is_embedded_here(tmp_path, caplog):
    pytest.importorskip("ray")
    emb = ex.embed_texts(_Counts("words"), TEXTS, cache_dir=tmp_path, engine="ray", chunk_size=8)
    assert emb.array[:, 0, 0].tolist() == [len(t.split()) for t in TEXTS]
    assert "embedded here, not on Ray" in caplog.text


def test_ray_missing_is_one_line(tiny_models, tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(ConfigError, match=r"needs Ray: pip install 'autolayer\[ray\]'"):
        ex.embed_texts(str(tiny_models["bert"]), TEXTS, cache_dir=tmp_path, engine="ray")
    code, _, err = run(
        capsys,
        *("extract", "-m", tiny_models["bert"], "-d", tiny_dataset, "--cache-dir", tmp_path),
        *("--engine", "ray"),
    )
    assert code == 2
    assert one_error_line(err) == "error: --engine 'ray' needs Ray: pip install 'autolayer[ray]'"


def test_an_unreachable_address_is_one_line_naming_it(
    tiny_models, tiny_dataset, tmp_path, capsys, monkeypatch
):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a new process would be
    monkeypatch.setattr(ray, "init", _never)
    model, nowhere = str(tiny_models["bert"]), "127.0.0.1:1"
    code, _, err = run(
        capsys,
        *("extract", "-m", model, "-d", tiny_dataset, "--cache-dir", tmp_path),
        *("--engine", "ray", "--ray-address", nowhere),
    )
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: cannot reach the Ray cluster at {nowhere} (--ray-address)")
    monkeypatch.setenv("RAY_ADDRESS", nowhere)
    with pytest.raises(ConfigError, match=rf"at {nowhere} \(RAY_ADDRESS\)"):
        ex.embed_texts(model, TEXTS, cache_dir=tmp_path, engine="ray")


def _never(*args, **kwargs):
    raise AssertionError("Ray was started or joined")


def test_where_extraction_runs_is_no_setting_of_a_result():
    ray = Options(engine="ray", ray_address="head:6379", ray_actors=4)
    assert ray.results() == Options().results()
    assert not {"engine", "ray_address", "ray_actors"} & set(ray.results())
    assert ray.extraction()["engine"] == "ray" and ray.extraction()["ray_actors"] == 4
    with pytest.raises(ConfigError, match="engine must be one of local, ray"):
        Options(engine="spark")
    with pytest.raises(ConfigError, match="ray_actors must be an integer >= 1"):
        Options(ray_actors=0)


def test_a_cached_extraction_never_starts_ray(tiny_models, reference, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    model = str(tiny_models["bert"])
    threads = torch.get_num_threads()
    try:
        ex.embed_texts(model, TEXTS, cache_dir=tmp_path, **SETTINGS)
        monkeypatch.setattr(ray, "init", _never)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        hit = ex.embed_texts(model, TEXTS, cache_dir=tmp_path, engine="ray", **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    assert hit.meta["cached"]
    np.testing.assert_array_equal(hit.array, reference)
