"""Where an extraction's chunks are computed: in this process, or on Ray actors.

An extraction (:func:`autolayer.extraction.embed_texts`) orders a split's texts longest first
and cuts them into the cache entry's fixed chunks; a chunk is both the unit of work and the
unit of checkpoint (each is written atomically, with its checksum). The extraction keeps
everything that makes the result right and resumable: the entry's lock (two drivers on one
entry never both compute a chunk: the second waits, then loads the finished entry), which
chunks are missing, the timing file, progress and the final assembly. An engine only
computes the missing chunks and reports each one finished, as ``(index, rows, seconds)``.

:class:`LocalEngine` computes them one after another here, as autolayer always has.
:class:`RayEngine` hands them to Ray actors, each holding the (truncated) backbone, each
writing its chunks into the same cache entry: the finished array is the one the local path
gives, bit for bit at the same thread count (fp32 on CPU), since every chunk is the same
texts embedded with the same settings.

Ray core actors, not Ray Data: a chunk is already the unit of work and of checkpoint, so
Ray's scheduling (an ``ActorPool``), fault tolerance (``max_restarts`` and
``max_task_retries``: a killed actor is restarted and its call retried) and object transfer
are all that is needed, and no scheduler of autolayer's own. Measured on a 2-core machine:
two core actors ready in 0.8 s; a 4-item ``ray.data`` ``map_batches`` over 2 actors took
7.9 s and printed its own progress output.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from autolayer.cache import CacheEntry
from autolayer.device import set_threads
from autolayer.errors import AutolayerError, ConfigError, ModelError
from autolayer.options import ENGINES, Interval
from autolayer.sources.base import FeatureSource, Progress

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger("autolayer")

Chunk = tuple[int, list[str]]  # a missing chunk: its index and its texts, in processing order
Done = Callable[[int, int, float], None]  # a chunk finished: index, rows, seconds embedding
RETRIES = 3  # restarts of a dead actor, and retries of the call it was running
CONNECT_SECONDS = 5.0  # to reach a cluster's address before Ray, which retries for minutes
MISSING_RAY = "engine 'ray' needs Ray: pip install 'autolayer[ray]'"


@dataclass(frozen=True)
class Run:
    """One source at chosen layers, with its batching and feature settings: what an
    extraction computes, and an engine computes a chunk of at a time."""

    source: FeatureSource
    layers: tuple[int, ...]
    batch_size: int
    max_tokens: int
    work: dict  # pooling, max_length, device

    def embed(self, texts: Sequence[str], progress: Progress | None) -> np.ndarray:
        return self.source.embed(
            texts,
            self.layers,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            progress=progress,
            **self.work,
        )


class Engine(Protocol):
    """Computes an extraction's missing chunks into its cache entry."""

    def compute(
        self,
        entry: CacheEntry,
        run: Run,
        chunks: Sequence[Chunk],
        progress: Progress | None,
        done: Done,
    ) -> None:
        """Embed and write each of ``chunks`` into ``entry``, calling ``done`` per chunk;
        ``progress`` advances by rows embedded, as the work goes."""


def make_engine(
    name: str = "local",
    address: str | None = None,
    actors: int | None = None,
    threads: int | None = None,
) -> Engine:
    """The engine ``name`` ("local" or "ray"); ``address``, ``actors`` and ``threads`` (per
    actor, default 1) are Ray's. Asking for Ray where it is not installed fails here,
    before any work."""
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(address=address, actors=actors, threads=threads or 1)
    raise ConfigError(
        f"engine must be one of {', '.join(ENGINES)}; got {name!r}", params=("engine",)
    )


class LocalEngine:
    """Chunks computed one after another in this process, the model loaded at the first."""

    def compute(
        self,
        entry: CacheEntry,
        run: Run,
        chunks: Sequence[Chunk],
        progress: Progress | None,
        done: Done,
    ) -> None:
        for number, (index, texts) in enumerate(chunks):
            if number == 0:
                run.source.preload(run.layers, run.work["device"])  # once, and not timed
            started = time.perf_counter()
            chunk = run.embed(texts, progress)
            took = time.perf_counter() - started
            entry.write_chunk(index, chunk)
            done(index, len(texts), took)


@dataclass(frozen=True)
class _Job:
    """What an actor needs to rebuild the run and write into the entry: plain values, as
    they travel to other machines (the source itself is rebuilt there from its spec)."""

    spec: str
    trust_remote_code: bool
    identity: str
    layers: tuple[int, ...]
    batch_size: int
    max_tokens: int
    work: dict  # pooling, max_length, device
    root: str
    fields: dict


class _ChunkActor:
    """A Ray actor's state: the source rebuilt from its spec and loaded once (again after a
    restart), then one chunk embedded and written per call."""

    def __init__(self, job: _Job, threads: int) -> None:
        from autolayer.sources import make_source

        self.entry = CacheEntry(Path(job.root), job.fields)
        self.error: AutolayerError | OSError | None = None
        try:  # kept for the first call: an error there reaches the driver as itself
            set_threads(threads)
            source = make_source(job.spec, trust_remote_code=job.trust_remote_code)
            if source.identity != job.identity:
                raise ModelError(
                    f"{job.spec} on {socket.gethostname()} is not the model the driver "
                    f"has (identity {source.identity}, not {job.identity})"
                )
            self.run = Run(source, job.layers, job.batch_size, job.max_tokens, job.work)
            source.preload(job.layers, job.work["device"])
        except (AutolayerError, OSError) as exc:
            self.error = exc

    def embed(self, index: int, texts: list[str]) -> tuple[int, int, float]:
        if self.error is not None:
            raise self.error
        started = time.perf_counter()
        chunk = self.run.embed(texts, None)
        took = time.perf_counter() - started
        self.entry.write_chunk(index, chunk)
        return index, len(texts), took


class RayEngine:
    """Chunks computed by Ray actors, ``threads`` CPU threads each (and one GPU each when
    the device is CUDA), ``actors`` of them (None: the cluster's CPUs // ``threads``, or
    one per GPU; never more than the chunks to compute).

    ``address`` is the cluster's (None: ``RAY_ADDRESS`` if set, else a local Ray sized to
    this machine). Ray is joined (or started) at the first chunk to compute, not before, so
    a cached extraction costs nothing; a Ray this process started stays up until it exits
    (a search extracts many entries), and one already initialised is used as it is, never
    shut down. Every node must reach the cache folder at the same path.
    """

    def __init__(self, address: str | None = None, actors: int | None = None, threads: int = 1):
        _import_ray()
        self.address = address
        self.actors = Interval(int, 1).check("ray_actors", actors, optional=True)
        self.threads = threads

    def compute(
        self,
        entry: CacheEntry,
        run: Run,
        chunks: Sequence[Chunk],
        progress: Progress | None,
        done: Done,
    ) -> None:
        if not chunks:
            return
        if not can_rebuild(run.source):
            logger.warning(
                "%s is embedded here, not on Ray: actors rebuild transformer models only "
                "(zoo alias, local folder, .gguf, hub id)",
                run.source.name,
            )
            LocalEngine().compute(entry, run, chunks, progress, done)
            return
        ray = self._connect()
        from ray.util import ActorPool

        actors = self._start_actors(ray, entry, run, len(chunks))
        try:
            pool = ActorPool(actors)
            results = pool.map_unordered(lambda actor, item: actor.embed.remote(*item), chunks)
            for index, rows, took in _unwrapped(ray, results):
                done(index, rows, took)
                if progress:
                    progress(rows)
        finally:  # on success, error or Ctrl-C: no actor outlives its extraction
            for actor in actors:
                ray.kill(actor)

    def _connect(self):
        """Ray, joined or started unless this process already did: a cluster's address is
        tried first, as Ray itself would retry an unreachable one for minutes."""
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        address = self.address or os.environ.get("RAY_ADDRESS")
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if address:
                _check_reachable(address, "ray_address" if self.address else "RAY_ADDRESS")
                ray.init(address=address, ignore_reinit_error=True, **quiet)
            else:
                ray.init(
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    ignore_reinit_error=True,
                    **quiet,
                )
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot join Ray at {address}: {exc}", params=("ray_address",)
            ) from None
        return ray

    def _start_actors(self, ray, entry: CacheEntry, run: Run, n_chunks: int) -> list:
        """The actors, named by entry and number (``ray list actors`` shows what they do)."""
        gpu = run.work["device"].startswith("cuda")
        work = {**run.work, "device": "cuda"} if gpu else run.work  # Ray picks the GPU
        job = _Job(
            spec=run.source.spec,
            trust_remote_code=run.source.trust_remote_code,
            identity=run.source.identity,
            layers=run.layers,
            batch_size=run.batch_size,
            max_tokens=run.max_tokens,
            work=work,
            root=str(entry.directory.parent),
            fields=entry.fields,
        )
        remote = ray.remote(_ChunkActor)
        count = min(self.actors or self._default_actors(ray, gpu), n_chunks)
        return [
            remote.options(
                name=f"autolayer-{entry.key}-{number}",
                num_cpus=self.threads,
                num_gpus=1 if gpu else 0,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            ).remote(job, self.threads)
            for number in range(count)
        ]

    def _default_actors(self, ray, gpu: bool) -> int:
        resources = ray.cluster_resources()
        if gpu:
            return max(1, int(resources.get("GPU", 0)))
        return max(1, int(resources.get("CPU", 1)) // self.threads)


def can_rebuild(source: FeatureSource) -> bool:
    """Whether an actor can rebuild ``source`` from its spec alone: the transformers kind
    (zoo alias, local folder, .gguf, hub id). A source registered by the user's own code
    is unknown to a worker process, and one that learns from texts is never embedded."""
    from autolayer.sources.transformer import TransformerSource

    return type(source) is TransformerSource


def _unwrapped(ray, results):
    """``results``, with an autolayer or OS error raised in an actor (a model or a cache
    folder a node cannot reach) re-raised as itself, which the CLI says in one line, and an
    actor dead beyond its restarts said in one line."""
    try:
        yield from results
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, AutolayerError | OSError):
            raise exc.cause from None
        raise
    except ray.exceptions.RayActorError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise AutolayerError(
            f"a Ray actor died beyond its {RETRIES} restarts ({first[:200]}); the chunks "
            "finished are kept: run the same command to resume"
        ) from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING_RAY, params=("engine",)) from None
    return ray


def _check_reachable(address: str, named: str) -> None:
    """A one-line error unless ``address`` (``host:port``, or ``ray://host:port``) takes a
    connection; ``auto`` (a cluster on this machine) is left to Ray, which fails fast."""
    where = address.removeprefix("ray://")
    if where in ("auto", "local"):
        return
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host or "localhost", int(port)), CONNECT_SECONDS).close()
    except ValueError:
        raise ConfigError(
            f"{named} must be host:port (or ray://host:port); got {address!r}", params=(named,)
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({named}): {exc.strerror or exc}",
            params=(named,),
        ) from None
