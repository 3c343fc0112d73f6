"""Benchmark: extraction on Ray (2 actors x 1 thread) against one local process (x 2
threads) on the same split, and on paper the wall time of 10 million texts on 8 GPUs
(issue 32).

All arms run one after the other in this one driver process, each from a cold cache (a
temporary cache folder of its own), on the first ``--n`` texts of ``--data`` (default 2,000
MR training texts), all hidden states of ``--model`` (default minilm), mean pooling,
``max_length`` 128, chunks of ``--chunk-size`` rows:

1. ``local, 1 thread``: the reference array (it also pays the driver's first imports, so
   the timed local arm after it does not);
2. ``local, 2 threads`` (``embed_texts(..., threads=2)``): the arm Ray is compared with;
3. ``ray.init(num_cpus=2, include_dashboard=False)``, timed: Ray's start-up;
4. ``ray, 2 actors x 1 thread`` (``engine="ray", ray_actors=2, threads=1``), whose
   extraction wall includes starting the actors and loading the model in each.

Start-up is read from timestamps within each timed call, not from a separate call: the
extraction's driver records every chunk as it finishes, on either engine
(``CacheEntry.write_chunk_timing``: the chunk's rows and embedding seconds), and the
benchmark notes when. Start-up is the time from the call's start to the first chunk
finished, minus that chunk's embedding seconds: the model loaded in this process (local),
or the actors started, their imports and the model loaded in each (Ray); in both arms also
the driver's work before the first chunk (tokenizing the split to order it longest first)
and the first chunk's transfer and write.

From the same record (the meta's ``timed_seconds`` is its sum), per arm with ``workers``
processes (1 local, 2 actors) and ``chunks`` chunks::

    per-chunk overhead = (extraction wall - start-up - sum(chunk seconds) / workers) / chunks

that is, the wall time per chunk that is neither start-up nor embedding, given the workers
embed in parallel: the driver's own work per chunk and at the end (the timing file, the
final array: the local arm pays it too), scheduling, transfer and chunk writes, and any
imbalance between the actors at the last chunks. Ray's own share is the Ray arm's overhead
minus the local arm's.

On paper: 10 million texts on 8 GPUs (8 actors x 1 GPU), each GPU embedding
``--gpu-texts-per-second`` texts a second. That throughput is an ASSUMPTION passed by the
user (default 2,000 for a MiniLM-class encoder at 128 tokens), NOT measured here: this
machine has no GPU. The overhead above is wall time per chunk with 2 actors, so the
projection is printed both ways it could scale, as bounds::

    overhead in the actors (shrinks with more of them):
        start-up + ceil(chunks / 8) x (chunk_size / gpu rate + 2 x per-chunk overhead)
    overhead in the driver (serial, does not shrink):
        start-up + ceil(chunks / 8) x chunk_size / gpu rate + chunks x per-chunk overhead

with start-up = ray.init + the Ray arm's start-up as measured here (joining a running
cluster costs less than starting one; loading a model onto a GPU may cost more).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python studies/bench/ray_engine.py

Run it unpinned on an otherwise idle 2-core machine: the comparison is 2 threads against 2
processes on the same 2 cores, and anything else running takes from one arm and not the
other (the JSON keeps the load average at the start). ``OMP_NUM_THREADS=1`` starts every
process (the Ray workers too, which inherit it) at one thread; autolayer sets each arm's
torch threads itself. A smoke run: ``--n 64 --chunk-size 16 --json /tmp/ray-smoke.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
import torch

from autolayer.cache import CacheEntry
from autolayer.extraction import embed_texts

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "mr" / "train.jsonl"
RESULTS = Path(__file__).parent / "results"
ACTORS = 2  # Ray actors x 1 thread, against 1 local process x ACTORS threads
GPUS, TEXTS_ON_PAPER = 8, 10_000_000


def first_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` texts of a ``{"text", "label"}`` JSONL file."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in itertools.islice(lines, n)]


@contextmanager
def chunk_clock() -> Iterator[list[tuple[float, dict]]]:
    """When the extraction records each finished chunk, with its record so far (index →
    [rows, seconds]): the driver writes it as each chunk ends, on either engine."""
    seen: list[tuple[float, dict]] = []
    write = CacheEntry.write_chunk_timing

    def noted(entry: CacheEntry, timing: dict) -> None:
        seen.append((time.perf_counter(), dict(timing)))
        write(entry, timing)

    CacheEntry.write_chunk_timing = noted
    try:
        yield seen
    finally:
        CacheEntry.write_chunk_timing = write


def arm(texts: list[str], chunk_size: int, workers: int, settings: dict) -> dict:
    """One extraction of ``texts`` into a cold cache of its own (``settings``:
    ``embed_texts``'s, the model among them): its wall, each chunk's embedding seconds as
    the cache recorded them, its start-up and per-chunk overhead (the module's docstring
    says how), and the array, copied out of the cache."""
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as cache, chunk_clock() as seen:
        started = time.perf_counter()
        emb = embed_texts(texts=texts, cache_dir=cache, chunk_size=chunk_size, **settings)
        wall = time.perf_counter() - started
        array = np.array(emb.array)
    first_at, first = seen[0]  # the first chunk finished: the record holds it alone
    [(_, first_seconds)] = first.values()
    chunk_seconds = {int(index): took for index, (_, took) in seen[-1][1].items()}
    startup = first_at - started - first_seconds
    embedding = sum(chunk_seconds.values()) / workers
    return {
        "workers": workers,
        "wall_seconds": wall,
        "startup_seconds": startup,
        "chunk_seconds": [chunk_seconds[i] for i in sorted(chunk_seconds)],
        "timed_seconds": emb.meta["timed_seconds"],
        "timed_rows": emb.meta["timed_rows"],
        "embedding_seconds": embedding,
        "per_chunk_overhead_seconds": (wall - startup - embedding) / len(chunk_seconds),
        "array": array,
    }


def start_ray() -> float:
    """Start a local Ray of 2 CPUs (as the engine would start one), in seconds."""
    started = time.perf_counter()
    ray.init(
        num_cpus=ACTORS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    return time.perf_counter() - started


def on_paper(ray_init: float, ray_arm: dict, chunk_size: int, gpu_rate: float) -> dict:
    """10 million texts on 8 GPUs, from the measured costs and the assumed GPU rate."""
    chunks = math.ceil(TEXTS_ON_PAPER / chunk_size)
    rounds = math.ceil(chunks / GPUS)
    startup = ray_init + ray_arm["startup_seconds"]
    overhead, actors = ray_arm["per_chunk_overhead_seconds"], ray_arm["workers"]
    embed = chunk_size / gpu_rate
    in_actors = startup + rounds * (embed + actors * overhead)
    in_driver = startup + rounds * embed + chunks * overhead
    print(
        f"\non paper: {TEXTS_ON_PAPER:,} texts on {GPUS} GPUs, ASSUMING {gpu_rate:g} texts/s "
        "per GPU (not measured: this machine has no GPU); start-up = ray.init + Ray arm's"
    )
    print(
        f"  overhead in the actors: {startup:.2f} + ceil({chunks}/{GPUS}) x "
        f"({chunk_size}/{gpu_rate:g} + {actors} x {overhead:.4f}) = "
        f"{in_actors:.0f} s = {in_actors / 60:.1f} min"
    )
    print(
        f"  overhead in the driver: {startup:.2f} + ceil({chunks}/{GPUS}) x "
        f"{chunk_size}/{gpu_rate:g} + {chunks} x {overhead:.4f} = "
        f"{in_driver:.0f} s = {in_driver / 60:.1f} min"
    )
    return {
        "texts": TEXTS_ON_PAPER,
        "gpus": GPUS,
        "gpu_texts_per_second_assumed": gpu_rate,
        "chunks": chunks,
        "startup_seconds": startup,
        "per_chunk_overhead_seconds": overhead,
        "wall_seconds_overhead_in_actors": in_actors,
        "wall_seconds_overhead_in_driver": in_driver,
    }


def show(local: dict, ray_arm: dict, ray_init: float) -> None:
    """The measured values side by side, and Ray's over local's."""
    rows = [
        ("start-up (s)", "startup_seconds"),
        ("extraction wall (s)", "wall_seconds"),
        ("embedding, sum(chunks)/workers (s)", "embedding_seconds"),
        ("per-chunk overhead (s)", "per_chunk_overhead_seconds"),
    ]
    print(f"\n{'':38}{'local 1x2':>12}{'ray 2x1':>12}{'ray/local':>11}")
    print(f"{'ray.init (s)':38}{'':>12}{ray_init:12.2f}")
    for label, key in rows:
        ratio = ray_arm[key] / local[key] if local[key] else float("nan")
        print(f"{label:38}{local[key]:12.4f}{ray_arm[key]:12.4f}{ratio:11.2f}")
    whole = (ray_init + ray_arm["wall_seconds"]) / local["wall_seconds"]
    print(f"{'wall with ray.init':38}{'':>12}{'':>12}{whole:11.2f}")
    extra = ray_arm["per_chunk_overhead_seconds"] - local["per_chunk_overhead_seconds"]
    print(f"Ray's own per-chunk overhead (ray - local): {extra:.4f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a {text, label} JSONL file")
    parser.add_argument("--n", type=int, default=2000, help="its first N texts")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument(
        "--gpu-texts-per-second",
        type=float,
        default=2000.0,
        help="ASSUMED per-GPU throughput for the on-paper projection (not measured here)",
    )
    parser.add_argument("--json", type=Path, help="default: results/ray-<set>.json")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name = args.data.parent.name
    out = args.json or RESULTS / f"ray-{name}.json"
    texts = first_texts(args.data, args.n)
    base = {"model": args.model, "max_length": 128}
    load = os.getloadavg()
    print(f"{len(texts)} texts of {name}, {args.model}, chunks of {args.chunk_size}; load {load}")

    reference = arm(texts, args.chunk_size, 1, {**base, "threads": 1})
    local = arm(texts, args.chunk_size, 1, {**base, "threads": ACTORS})
    ray_init = start_ray()
    on_ray = {**base, "threads": 1, "engine": "ray", "ray_actors": ACTORS}
    ray_arm = arm(texts, args.chunk_size, ACTORS, on_ray)
    ray.shutdown()

    identical = bool(np.array_equal(ray_arm["array"], reference["array"]))
    diff = float(np.abs(local["array"] - reference["array"]).max())
    print(f"ray (1 thread per actor) == local 1 thread, bit for bit: {identical}")
    print(f"local 2 threads vs local 1 thread: max |diff| {diff:.3g}")
    show(local, ray_arm, ray_init)
    paper = on_paper(ray_init, ray_arm, args.chunk_size, args.gpu_texts_per_second)

    for result in (reference, local, ray_arm):
        del result["array"]
    results = {
        "data": str(args.data),
        "texts": len(texts),
        "model": args.model,
        "max_length": 128,
        "chunk_size": args.chunk_size,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "local_1_thread": reference,
        "local_2_threads": local,
        "ray_init_seconds": ray_init,
        "ray_2_actors_1_thread": ray_arm,
        "ray_equals_local_1_thread": identical,
        "local_2_threads_max_abs_diff": diff,
        "on_paper": paper,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
