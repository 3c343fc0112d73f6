"""Extraction on Ray (autolayer.engine), on one local Ray started for the module.

The tiny encoder's chunks are computed by Ray actors into the cache entry the local path
writes: the same array bit for bit (one thread each side), resumable and fault tolerant
(an actor killed mid-run, the driver killed and run again), a recommend whose extraction
runs on Ray, and a clear line when Ray is missing, its address cannot be reached, no node
has room for an actor, or a chunk is written where the driver cannot see it. Chunks of 8
rows over 40 texts: 5 chunks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import torch

from autolayer import engine
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
# recorded its first finished chunk, so the kill finds at least one chunk on disk. It says
# whether its SIGTERM handler is still its own once Ray is joined (ray.init replaces it).
DRIVER = """\
import json, os, signal, sys

from autolayer import cache, extraction

write_timing = cache.CacheEntry.write_chunk_timing


def own(signum, frame):
    sys.exit(3)


def stop_after_first_chunk(self, timing):
    write_timing(self, timing)
    paused = os.environ["PAUSED"]
    with open(paused + ".tmp", "w") as out:
        out.write(f"own SIGTERM handler: {signal.getsignal(signal.SIGTERM) is own}")
    os.replace(paused + ".tmp", paused)
    while True:
        signal.pause()


signal.signal(signal.SIGTERM, own)


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
    """A Ray of 2 CPUs for the module's tests, shut down after them (unless it was up);
    pytest's SIGTERM handler is kept, as the engine keeps the CLI's."""
    ours = not ray.is_initialized()
    if ours:
        sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        signal.signal(signal.SIGTERM, sigterm)
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
    monkeypatch.setattr(tr.Backbone, "forward_pooled", _refuse)


def _refuse(self, *args, **kwargs):
    raise AssertionError("the driver ran the model")


def _autolayer_actors(ray) -> list[str]:
    return [name for name in ray.util.list_named_actors() if name.startswith("autolayer-")]


def test_ray_fills_the_entry_the_local_path_reads_with_the_same_array(
    local_ray, tiny_models, reference, tmp_path, one_thread, no_model_here
):
    model, cache = str(tiny_models["bert"]), tmp_path / "cache"
    emb = ex.embed_texts(model, TEXTS, cache_dir=cache, engine="ray", ray_actors=2, **SETTINGS)
    np.testing.assert_array_equal(emb.array, reference)
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
    local_ray, tiny_models, reference, tmp_path, caplog, capsys, monkeypatch, one_thread
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
        assert paused.read_text() == "own SIGTERM handler: True"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    [entry] = cache.iterdir()
    assert not (entry / "meta.json").exists() and list((entry / "chunks").glob("*.npy"))

    # run again from the command line: `extract --engine ray` resumes, with the same array
    dataset = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    monkeypatch.setitem(ex.embed_texts.__kwdefaults__, "chunk_size", CHUNK)
    monkeypatch.setattr(tr.Backbone, "forward_pooled", _refuse)  # the actors run the model
    code, _, err = run(
        capsys,
        *("extract", "-m", model, "-d", dataset, "--batch-size", BATCH, "--threads", 1),
        *("--engine", "ray", "--ray-actors", 1, "--cache-dir", cache, "-o", tmp_path / "x.npy"),
    )
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert len(said) == 1 and f"of {len(TEXTS)} rows already embedded" in said[0]
    assert not said[0].startswith(f"resuming cache entry {entry}: {len(TEXTS)} of")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), reference)


class _Counts(FeatureSource):
    """A dense source of autolayer's users' own (words per text): no actor can rebuild it."""

    kind, identity, n_states, width = "word-total", "word-total-1", 1, 1

    def embed(self, texts, layers, **settings):
        return np.array([[[len(t.split())]] for t in texts], dtype=np.float32)

    def parameters(self, layer: int) -> int:
        return 0


def test_a_source_no_actor_can_rebuild_is_embedded_here(tmp_path, caplog):
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
    with socket.socket() as mute:  # takes connections (the kernel's backlog), never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        silent = f"127.0.0.1:{mute.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", silent)
        monkeypatch.setattr(engine, "CONNECT_SECONDS", 0.2)
        said = rf"^{silent} \(RAY_ADDRESS\) takes connections but does not answer as Ray"
        with pytest.raises(ConfigError, match=said):
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
        Options(engine="ray", ray_actors=0)
    for name, value in (("ray_address", "head:6379"), ("ray_actors", 2)):
        with pytest.raises(ConfigError, match=rf"^{name} needs engine 'ray'$"):
            Options(**{name: value})


def test_a_cached_extraction_never_starts_ray(tiny_models, reference, tmp_path, monkeypatch):
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


def test_ray_init_keeps_the_sigterm_handler_and_its_failure_is_one_line(monkeypatch):
    """``ray.init`` installs a SIGTERM handler that exits at once (bypassing the CLI's,
    which fails the running trial and says what was kept): joining Ray keeps the one set
    before, whether it succeeds or not; a refusal (Ray's ValueError when joining a `ray
    start` of this machine with settings of its own) is one line naming what was tried."""

    def ray_init(failure: Exception | None):
        def init(*args, **kwargs):
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # what Ray does
            if failure is not None:
                raise failure

        return init

    def ours(signum, frame):
        raise AssertionError("not called")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        monkeypatch.setattr(ray, "init", ray_init(None))
        engine.RayEngine()._connect()
        assert signal.getsignal(signal.SIGTERM) is ours
        monkeypatch.setattr(ray, "init", ray_init(ValueError("num_cpus must not be given\n…")))
        with pytest.raises(
            ConfigError, match=r"^cannot start a local Ray: num_cpus must not be given$"
        ):
            engine.RayEngine()._connect()
        assert signal.getsignal(signal.SIGTERM) is ours
        monkeypatch.setattr(ray, "init", ray_init(ConnectionError("no cluster")))
        with pytest.raises(
            ConfigError, match=r"^cannot join Ray at auto \(ray_address\): no cluster$"
        ):
            engine.RayEngine(address="auto")._connect()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_threads_no_node_has_is_refused_in_one_line_before_any_actor(
    local_ray, tiny_models, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine.RayEngine, "_start_actors", _never)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ConfigError, match=r"^threads is 3 per Ray actor, more than any node"):
            ex.embed_texts(
                str(tiny_models["bert"]), TEXTS, cache_dir=tmp_path, engine="ray", threads=3
            )
    finally:
        torch.set_num_threads(threads)


def test_a_chunk_the_driver_cannot_see_is_one_line_naming_host_and_folder(
    local_ray, tiny_models, tmp_path, monkeypatch, one_thread
):
    """As if the cache folder were not shared: the chunk an actor wrote is not there."""
    seen = engine.check_visible

    def elsewhere(entry, index, host):
        entry.chunk_path(index).unlink()
        seen(entry, index, host)

    monkeypatch.setattr(engine, "check_visible", elsewhere)
    with pytest.raises(ConfigError) as raised:
        ex.embed_texts(
            str(tiny_models["bert"]),
            TEXTS,
            cache_dir=tmp_path,
            engine="ray",
            ray_actors=1,
            **SETTINGS,
        )
    [entry] = tmp_path.iterdir()
    assert str(raised.value).startswith(f"chunk 0 was written on host {socket.gethostname()} ")
    assert str(raised.value).endswith(
        f"into {entry}, which this machine does not see: the cache folder must be the same "
        "path on every node"
    )


def test_a_recommend_whose_extraction_runs_on_ray_fills_the_local_cache(
    local_ray, tiny_models, tiny_dataset, home, tmp_path, capsys, one_thread, no_model_here
):
    """End to end: every extraction of a recommend on Ray (the driver runs no model), and a
    later local recommend finds all of them in the cache (it runs no model either)."""
    cache, model = tmp_path / "cache", str(tiny_models["bert"])
    common = ("recommend", "-d", tiny_dataset, "--models", model, "--n-trials", 2)
    common += ("--max-length", 12, "--cache-dir", cache)
    code, _, err = run(
        capsys, *common, "--engine", "ray", "--ray-actors", 1, "-o", tmp_path / "ray"
    )
    assert code == 0, err
    assert list(cache.iterdir())
    code, _, err = run(capsys, *common, "-o", tmp_path / "local")
    assert code == 0, err
