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
are all that is needed, and no scheduler of autolayer's own. Measured on a 2-core machine
(``studies/bench/ray_startup.py``): two core actors ready in 0.8 s; a 4-item ``ray.data``
``map_batches`` over 2 actors took 7.9–8.7 s and printed its own progress output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
import uuid
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
CONNECT_SECONDS = 5.0  # to reach a cluster's address and hear it answer, before Ray
# For the actors to be placed and started: one Ray cannot place (its CPUs or GPU held by
# other work) would never run the chunks handed to it, and Ray's own warning is silenced.
READY_SECONDS = 120.0
# What makes a spec resolve (zoo aliases, the hub cache, offline mode) the same on workers.
PASSED_ENV = ("AUTOLAYER_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
MISSING_RAY = "engine 'ray' needs Ray: pip install 'autolayer[ray]'"
GRPC_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS = 4  # the HTTP/2 frame type a gRPC server answers the greeting with


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
        """The features of ``texts`` with the run's settings: the one call that computes a
        chunk, here or on an actor, which is why a chunk is the same either way."""
        return self.source.embed(
            texts,
            self.layers,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            progress=progress,
            **self.work,
        )

    def write(
        self, entry: CacheEntry, index: int, texts: Sequence[str], progress: Progress | None
    ) -> float:
        """Chunk ``index`` of ``entry`` (``texts``) embedded and written atomically, here
        or on an actor alike; the seconds embedding it (what a prediction pays per text:
        loading the weights is not counted, nor the write)."""
        started = time.perf_counter()
        chunk = self.embed(texts, progress)
        took = time.perf_counter() - started
        entry.write_chunk(index, chunk)
        return took


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
            done(index, len(texts), run.write(entry, index, texts, progress))


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
    """A Ray actor's state: the source rebuilt from its spec, its weights loaded at the first
    call (again after a restart), then one chunk embedded and written per call.

    The weights are not loaded here: the driver waits for every actor to be constructed
    (placed by Ray) within :data:`READY_SECONDS`, which a large model's download must not
    count against."""

    def __init__(self, job: _Job, threads: int) -> None:
        from autolayer.sources import make_source

        self.entry = CacheEntry(Path(job.root), job.fields)
        self.host = socket.gethostname()
        self.loaded = False
        self.error: AutolayerError | OSError | None = None
        try:  # kept for the first call: an error there reaches the driver as itself
            set_threads(threads)
            source = make_source(job.spec, trust_remote_code=job.trust_remote_code)
            if source.identity != job.identity:
                raise ModelError(
                    f"{job.spec} on {self.host} is not the model the driver "
                    f"has (identity {source.identity}, not {job.identity})"
                )
            self.run = Run(source, job.layers, job.batch_size, job.max_tokens, job.work)
        except (AutolayerError, OSError) as exc:
            self.error = exc

    def embed(self, index: int, texts: list[str]) -> tuple[int, int, float, str]:
        """Chunk ``index`` (``texts``) embedded and written into the entry; returns it with
        its rows, the seconds embedding (the weights' loading not counted, as in the local
        path) and this host, which the driver names if it cannot see the chunk."""
        if self.error is not None:
            raise self.error
        if not self.loaded:
            self.run.source.preload(self.run.layers, self.run.work["device"])
            self.loaded = True
        return index, len(texts), self.run.write(self.entry, index, texts, None), self.host


class RayEngine:
    """Chunks computed by Ray actors, ``threads`` CPU threads each (and one GPU each when
    the device is CUDA), ``actors`` of them (None: as many as the cluster's nodes have room
    for, ``threads`` CPUs each, or one per GPU; never more than the chunks to compute).

    ``address`` is the cluster's (None: ``RAY_ADDRESS`` if set, else a Ray on this
    machine: the one ``ray start`` runs here, or a new one of this process's CPUs). Ray is
    joined (or started) at the first chunk to compute, not before, so a cached extraction
    costs nothing (not even importing Ray); a Ray this process started stays up until it
    exits (a search extracts many entries), and one already initialised is used as it is,
    never shut down. Every node must reach the cache folder at the same path.
    """

    def __init__(self, address: str | None = None, actors: int | None = None, threads: int = 1):
        if importlib.util.find_spec("ray") is None:  # importing Ray takes seconds
            raise ConfigError(MISSING_RAY, params=("engine",))
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

        gpu = run.work["device"].startswith("cuda")
        count = min(self._room(ray, gpu), len(chunks))
        actors: list = []
        try:
            self._start_actors(ray, entry, run, gpu, count, actors)
            pool = ActorPool(_ready(ray, actors, self.threads))
            results = pool.map_unordered(lambda actor, item: actor.embed.remote(*item), chunks)
            for index, rows, took, host in _unwrapped(ray, results):
                check_visible(entry, index, host)
                done(index, rows, took)
                if progress:
                    progress(rows)
        finally:  # on success, error or Ctrl-C: no actor outlives its extraction
            for actor in actors:
                ray.kill(actor)

    def _connect(self):
        """Ray, joined or started unless this process already did: a cluster's address is
        tried first, as Ray itself would retry an unreachable one for minutes. The process's
        SIGTERM handler is kept: ``ray.init`` replaces it with one that exits at once,
        bypassing the CLI's, which says what was kept and fails the running trial (Ray
        leaves SIGINT alone; Ray's processes still stop at exit, by its atexit hook)."""
        import ray

        if ray.is_initialized():
            return ray
        address = self.address or os.environ.get("RAY_ADDRESS")
        named = "ray_address" if self.address else "RAY_ADDRESS"
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if address:
            _check_reachable(address, named)
        try:
            with _sigterm_kept():
                if address:
                    ray.init(address=address, **quiet)
                else:  # Ray sizes it to the CPUs this process may use, or joins `ray start`
                    ray.init(include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"join Ray at {address} ({named})" if address else "start a local Ray"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"cannot {where}: {first[:300]}{_auth_hint()}", params=(named,) if address else ()
            ) from None
        return ray

    def _room(self, ray, gpu: bool) -> int:
        """How many actors to start: ``actors`` (default: all there is room for), refused in
        one line if no node can hold even one, as Ray would wait for it forever."""
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        cpus = [int(node.get("CPU", 0)) for node in nodes]
        gpus = [int(node.get("GPU", 0)) for node in nodes]
        if gpu and not any(gpus):
            raise ConfigError(
                "the device is CUDA but no node of the Ray cluster has a GPU",
                params=("device",),
            )
        if self.threads > max(cpus, default=0):
            raise ConfigError(
                f"threads is {self.threads} per Ray actor, more than any node of the "
                f"cluster has (at most {max(cpus, default=0)} CPUs)",
                params=("threads",),
            )
        fits = [c // self.threads for c in cpus]  # an actor's CPUs are on one node
        room = sum(min(f, g) for f, g in zip(fits, gpus, strict=True)) if gpu else sum(fits)
        if self.actors and self.actors > room:
            logger.warning(
                "ray_actors is %d but the Ray cluster has room for %d actors of %d threads"
                "%s: starting %d",
                self.actors,
                room,
                self.threads,
                " and a GPU" if gpu else "",
                room,
            )
        return max(1, min(self.actors or room, room))

    def _start_actors(
        self, ray, entry: CacheEntry, run: Run, gpu: bool, count: int, actors: list
    ) -> None:
        """``count`` actors, appended to ``actors`` as each is created (so the caller kills
        those made if a later one fails). Named by entry, run and number: ``ray list
        actors`` shows what they do, and a killed driver's leftovers never clash."""
        work = {**run.work, "device": "cuda"} if gpu else run.work  # Ray picks the GPU
        job = _Job(
            spec=_portable(run.source.spec),
            trust_remote_code=run.source.trust_remote_code,
            identity=run.source.identity,
            layers=run.layers,
            batch_size=run.batch_size,
            max_tokens=run.max_tokens,
            work=work,
            root=str(entry.directory.parent.resolve()),  # actors run in another folder
            fields=entry.fields,
        )
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        options = {"runtime_env": {"env_vars": env}} if env else {}
        remote = ray.remote(_ChunkActor)
        tag = uuid.uuid4().hex[:8]
        for number in range(count):
            actors.append(
                remote.options(
                    name=f"autolayer-{entry.key}-{tag}-{number}",
                    num_cpus=self.threads,
                    num_gpus=1 if gpu else 0,
                    max_restarts=RETRIES,
                    max_task_retries=RETRIES,
                    **options,
                ).remote(job, self.threads)
            )


def check_visible(entry: CacheEntry, index: int, host: str) -> None:
    """Refuse a chunk an actor wrote that this machine cannot see: the cache folder is not
    the same (shared) folder on every node, and the entry would never finish here."""
    if not entry.chunk_path(index).exists():
        raise ConfigError(
            f"chunk {index} was written on host {host} into {entry.directory}, which this "
            "machine does not see: the cache folder must be the same path on every node",
            params=("cache_dir",),
        )


def _ready(ray, actors: list, threads: int) -> list:
    """The actors Ray placed and started within :data:`READY_SECONDS` (the others are left
    to the caller to kill): those the pool may hand chunks, as one never placed would hold
    its chunk for ever. None: the cluster is busy, said in one line."""
    calls = [actor.__ray_ready__.remote() for actor in actors]
    finished, _ = ray.wait(calls, num_returns=len(calls), timeout=READY_SECONDS)
    for _ in _unwrapped(ray, (ray.get(call) for call in finished)):
        pass  # an actor that failed to start: its error, in one line
    ready = [actor for actor, call in zip(actors, calls, strict=True) if call in finished]
    if 0 < len(ready) < len(actors):
        logger.warning(
            "%d of %d Ray actors started within %.0f s (the cluster is busy): going on with those",
            len(ready),
            len(actors),
            READY_SECONDS,
        )
    if not ready:
        raise AutolayerError(
            f"the Ray cluster has no room for an actor of {threads} CPUs: none started "
            f"within {READY_SECONDS:.0f} s (its CPUs are busy with other work)"
        )
    return ready


@contextlib.contextmanager
def _sigterm_kept():
    """The process's SIGTERM handler as it was before the block (in the main thread: only
    it can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)


def _portable(spec: str) -> str:
    """``spec`` as an actor elsewhere can read it: a local folder or file by its absolute
    path (actors run in the raylet's folder, not the driver's); a zoo alias or a hub id as
    it is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


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


def _auth_hint() -> str:
    """Why a cluster that answered may still refuse this driver: ``ray start`` turns token
    authentication on by default from Ray 2.59, and a driver without ``RAY_AUTH_MODE`` set
    is refused, which Ray reports only in its own log lines."""
    if os.environ.get("RAY_AUTH_MODE"):
        return ""
    return (
        " (a cluster started by `ray start` may require token authentication: set "
        "RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN off its head node: `ray get-auth-token`)"
    )


def _check_reachable(address: str, named: str) -> None:
    """A one-line error unless ``address`` (``host:port``, or ``ray://host:port``) takes a
    connection and answers as Ray does (:func:`_speaks_grpc`); ``auto`` (a cluster on this
    machine) is left to Ray, which fails fast."""
    where = address.removeprefix("ray://")
    if where in ("auto", "local"):
        return
    host, _, port = where.rpartition(":")
    try:
        connection = socket.create_connection((host or "localhost", int(port)), CONNECT_SECONDS)
    except ValueError:
        raise ConfigError(
            f"{named} must be host:port (or ray://host:port); got {address!r}", params=(named,)
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({named}): {exc.strerror or exc}",
            params=(named,),
        ) from None
    with connection:
        if not _speaks_grpc(connection):
            raise ConfigError(
                f"{address} ({named}) takes connections but does not answer as Ray "
                f"(a gRPC server) within {CONNECT_SECONDS:.0f} s",
                params=(named,),
            )


def _speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server answers a gRPC client's greeting (HTTP/2's preface and an empty
    SETTINGS frame) with a SETTINGS frame, as Ray's GCS and client server do at once:
    something else on the port (a web server, a silent one) would have ``ray.init`` retry
    for many minutes, which Ray's own timeout variables do not bound. With TLS
    (``RAY_USE_TLS``) the handshake comes first, so the check is left to Ray."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    head = b""
    try:
        connection.sendall(GRPC_HELLO)
        while len(head) < 9:  # a frame's header: length (3 bytes), type, flags, stream
            part = connection.recv(9 - len(head))
            if not part:
                break
            head += part
    except OSError:  # a timeout, or the connection closed
        return False
    return len(head) == 9 and head[3] == SETTINGS
