"""Content-addressed, chunked, atomic on-disk store of extracted embedding arrays.

An entry is a folder named by a hash of everything the array depends on (model identity,
text fingerprint, pooling, max_length, dtype, layers). Extraction writes fixed-size chunks
as it goes, each by temp file + rename, so an interrupted run resumes at the first missing
chunk. Each chunk's SHA-256 is written just before it (``000003.sha256`` beside
``000003.npy``), so a finished chunk always has its checksum, and a chunk damaged between an
interruption and the resume (or one without a checksum) is recomputed, not assembled. When
all chunks exist and check out they are assembled into one memory-mappable ``embeddings.npy``
and ``meta.json`` (with the array's SHA-256) is written last: an entry without ``meta.json``
is unfinished, an entry whose array does not match its recorded size and hash is corrupt and
is recomputed, never silently used. A per-entry file lock makes concurrent writers (several
search workers sharing one cache folder) wait for each other instead of racing; the lock file
records its holder (pid, host, since when), so a waiter says at once whom it waits for. The
holder refreshes the lock file's mtime every few seconds (a heartbeat thread, which stops with
its process on Ctrl-Z), so a waiter, on this host or another sharing the folder, waits as long
as the holder works and gives up in one line once the lock has gone unrefreshed for
``AUTOLAYER_LOCK_TIMEOUT`` seconds (a stopped holder would otherwise block every other run
silently). The lock is an ``flock``, which the kernel releases when its holder dies, so a lock
left by a process that is gone is taken at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from autolayer.errors import CacheError, ConfigError
from autolayer.files import atomic_save_npy, atomic_write_bytes, user_mode

logger = logging.getLogger("autolayer")

FORMAT_VERSION = 1
ARRAY = "embeddings.npy"
META = "meta.json"
TIMING = "timing.json"
_VERIFIED: set[tuple] = set()  # (path, inode, size, mtime) of arrays hashed in this process
LOCK_TIMEOUT_VARIABLE = "AUTOLAYER_LOCK_TIMEOUT"
# Seconds without a heartbeat before a waiter gives up: long, as a slow disk or network
# file system may delay one; a stopped holder is still reported in the first line.
DEFAULT_LOCK_TIMEOUT = 3600.0
LOCK_POLL_SECONDS = 0.5
LOCK_HEARTBEAT_SECONDS = 5.0
HEARTBEAT_THREAD = "autolayer-lock-heartbeat"


def lock_timeout() -> float:
    """Seconds a waiter allows the holder of an entry to make no progress (not refresh its
    lock): ``$AUTOLAYER_LOCK_TIMEOUT``, by default one hour (0 gives up at once)."""
    raw = os.environ.get(LOCK_TIMEOUT_VARIABLE)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{LOCK_TIMEOUT_VARIABLE} must be a number of seconds >= 0; got {raw!r}")
    return seconds


def entry_key(fields: dict) -> str:
    """Stable hash of the fields an array depends on (JSON, sorted keys)."""
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def chunk_sha256(chunk: np.ndarray) -> str:
    """SHA-256 of a float32 chunk's values (row-major), independent of the .npy header."""
    return hashlib.sha256(np.ascontiguousarray(chunk, dtype=np.float32).data).hexdigest()


class CacheEntry:
    """One array in the store; see the module docstring for the on-disk protocol."""

    def __init__(self, root: Path, fields: dict) -> None:
        self.fields = fields
        self.key = entry_key(fields)
        self.directory = Path(root) / self.key

    # -- finished arrays ---------------------------------------------------------------------

    def load(self, *, verify: bool = True) -> tuple[np.ndarray, dict] | None:
        """The finished array (memory-mapped, read-only) and its meta, or None if absent.

        A corrupt entry (unreadable meta, wrong size or hash) is logged, removed and reported
        as absent so the caller recomputes it.
        """
        meta_path = self.directory / META
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            path = self.directory / ARRAY
            if path.stat().st_size != meta["nbytes"]:
                raise CacheError("size differs from the recorded size")
            if verify and not self._verified(path, meta["sha256"]):
                raise CacheError("content hash differs from the recorded hash")
            array = np.load(path, mmap_mode="r")
            if list(array.shape) != meta["shape"]:
                raise CacheError("shape differs from the recorded shape")
        except (OSError, ValueError, KeyError, CacheError) as exc:
            logger.warning("cache entry %s is corrupt (%s): recomputing", self.directory, exc)
            self.discard()
            return None
        return array, meta

    @staticmethod
    def _verified(path: Path, sha256: str) -> bool:
        """The file's hash matches, checked once per process while the file is unchanged (a
        multi-fidelity run reads the same whole-split entry for its screen and completion)."""
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            return True
        if file_sha256(path) != sha256:
            return False
        _VERIFIED.add(key)
        return True

    def discard(self) -> None:
        """Remove the finished array and meta (keeps chunks, which are checked separately)."""
        for name in (META, ARRAY):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    # -- chunks of an extraction in progress ---------------------------------------------------

    def chunk_path(self, index: int) -> Path:
        return self.directory / "chunks" / f"{index:06d}.npy"

    def checksum_path(self, index: int) -> Path:
        return self.directory / "chunks" / f"{index:06d}.sha256"

    def read_chunk(self, index: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """A finished chunk of the expected shape whose data matches its checksum, or None
        (missing, without a checksum, unreadable or damaged: the caller recomputes it)."""
        path = self.chunk_path(index)
        if not (path.exists() and self.checksum_path(index).exists()):
            return None  # one without a checksum was reported once by start_chunks
        try:
            chunk = np.load(path)
            recorded = self.checksum_path(index).read_text().strip()
        except (OSError, ValueError) as exc:
            logger.warning("chunk %s is unreadable (%s): recomputing it", path, exc)
            return None
        if chunk.shape != shape:
            return None
        if chunk_sha256(chunk) != recorded:
            logger.warning(
                "chunk %d of cache entry %s is damaged (its checksum differs): recomputing it",
                index,
                self.directory,
            )
            return None
        return chunk

    def start_chunks(self, layout: dict) -> None:
        """Keep an unfinished run's chunks only if they were cut the same way (hold the lock):
        chunks of another chunk size have the same shape but other rows."""
        folder = self.directory / "chunks"
        wanted = json.dumps(layout, sort_keys=True)
        try:
            same = (folder / "layout.json").read_text() == wanted
        except OSError:
            same = False
        if same:
            self._report_unchecked_chunks()
        else:
            shutil.rmtree(folder, ignore_errors=True)
            atomic_write_bytes(folder / "layout.json", wanted.encode())

    def finished_chunks(self) -> list[int]:
        """Indices of the chunks on disk with their checksum: what a resumed extraction
        keeps, unless `read_chunk` finds one damaged."""
        chunks = (self.directory / "chunks").glob("[0-9]*.npy")
        return sorted(int(path.stem) for path in chunks if path.with_suffix(".sha256").exists())

    def _report_unchecked_chunks(self) -> None:
        """Say once per entry, not once per chunk, that chunks an earlier version wrote
        (before chunks had checksums) cannot be trusted and are recomputed."""
        chunks = (self.directory / "chunks").glob("[0-9]*.npy")
        unchecked = sum(not path.with_suffix(".sha256").exists() for path in chunks)
        if unchecked:
            logger.warning(
                "cache entry %s has %d %s without a checksum (written by an earlier version): "
                "recomputing %s",
                self.directory,
                unchecked,
                "chunk" if unchecked == 1 else "chunks",
                "it" if unchecked == 1 else "them",
            )

    def remove_stale_temps(self) -> None:
        """Temp files of a writer killed mid-write (call while holding the lock)."""
        for pattern in (f".{ARRAY}.*", f".{META}.*"):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)

    def remove_chunks(self) -> None:
        """Chunks of a finished entry, left behind if its writer died right after meta.json."""
        if (self.directory / "chunks").exists():
            with self.lock():
                shutil.rmtree(self.directory / "chunks", ignore_errors=True)

    def write_chunk(self, index: int, chunk: np.ndarray) -> None:
        """Write the chunk's checksum, then the chunk (each atomically): a chunk on disk
        always has its checksum beside it, and a checksum without its chunk is ignored."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        atomic_write_bytes(self.checksum_path(index), chunk_sha256(chunk).encode())
        atomic_save_npy(self.chunk_path(index), chunk)

    def chunk_timing(self) -> dict[str, list[float]]:
        """Rows and seconds of each chunk computed so far, by any run of this extraction, so a
        resumed one still knows what a text costs (empty when unknown)."""
        try:
            return json.loads((self.directory / "chunks" / TIMING).read_text())
        except (OSError, ValueError):
            return {}

    def write_chunk_timing(self, timing: dict[str, list[float]]) -> None:
        atomic_write_bytes(self.directory / "chunks" / TIMING, json.dumps(timing).encode())

    def finalize(self, order: np.ndarray, chunk_size: int, shape: tuple, meta: dict) -> np.ndarray:
        """Assemble chunks (rows in ``order``) into the final array in original row order.

        ``order[j]`` is the original row of the j-th processed row: chunk i holds processed
        rows ``[i*chunk_size, (i+1)*chunk_size)``.
        """
        n = shape[0]
        self.remove_stale_temps()
        fd, tmp = tempfile.mkstemp(prefix=f".{ARRAY}.", suffix=".npy", dir=self.directory)
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for index, start in enumerate(range(0, n, chunk_size)):
                rows = order[start : start + chunk_size]
                chunk = self.read_chunk(index, (len(rows), *shape[1:]))
                if chunk is None:
                    raise CacheError(
                        f"chunk {index} of {self.directory} vanished or was damaged before "
                        "assembly: run the same command again to recompute it"
                    )
                out[rows] = chunk
            out.flush()
            del out
            user_mode(Path(tmp))
            os.replace(tmp, self.directory / ARRAY)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        path = self.directory / ARRAY
        meta = {
            **meta,
            "fields": self.fields,
            "shape": list(shape),
            "nbytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        atomic_write_bytes(self.directory / META, json.dumps(meta, indent=1).encode())
        shutil.rmtree(self.directory / "chunks", ignore_errors=True)
        return np.load(path, mmap_mode="r")

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Exclusive per-entry lock so two processes never extract the same entry at once.

        Held by another process, it is waited for, saying at once whom for, as long as that
        process refreshes the lock; after ``timeout`` seconds (default: :func:`lock_timeout`)
        without a refresh a ``CacheError`` says so. Held here, it is refreshed every
        ``LOCK_HEARTBEAT_SECONDS``.
        """
        timeout = lock_timeout() if timeout is None else timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".lock"
        # Not opened with "w": truncating would erase the holder's record before it is read.
        with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+") as fh:
            self._acquire(fh, timeout)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(_holder_record()))
            fh.flush()
            try:
                with _heartbeat(fh):
                    yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _acquire(self, fh, timeout: float) -> None:
        """Take the lock on ``fh``, waiting while its holder refreshes it (any change of the
        lock file's mtime, so clocks of other hosts do not matter) and giving up once it has
        not for ``timeout`` s."""
        if _try_flock(fh):
            return
        path = self.directory / ".lock"
        holder = _describe_holder(path)
        logger.warning(
            "waiting for %s, which holds cache entry %s; giving up if it makes no progress "
            "for %g s (%s sets it)",
            holder,
            self.directory,
            timeout,
            LOCK_TIMEOUT_VARIABLE,
        )
        beat, since = _last_beat(path), time.monotonic()
        while (idle := time.monotonic() - since) < timeout:
            time.sleep(min(LOCK_POLL_SECONDS, timeout - idle))
            if _try_flock(fh):
                return
            if (now := _last_beat(path)) != beat:
                beat, since = now, time.monotonic()
        raise CacheError(
            f"gave up waiting for {holder} to release cache entry {self.directory}: it made no "
            f"progress for {timeout:g} s; if it is stopped (Ctrl-Z), resume it (fg, or kill "
            f"-CONT) or end it; set {LOCK_TIMEOUT_VARIABLE} to wait longer"
        )


@contextlib.contextmanager
def _heartbeat(fh) -> Iterator[None]:
    """Refresh the held lock file's mtime every ``LOCK_HEARTBEAT_SECONDS`` until the block
    ends, so waiters see a holder that works; a stopped process's thread stops too."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):  # the entry removed meanwhile: nobody waits
                os.utime(fh.fileno())

    thread = threading.Thread(target=beat, name=HEARTBEAT_THREAD, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _last_beat(path: Path) -> int | None:
    """The lock file's mtime (ns), which its holder's heartbeat refreshes; None if absent."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _try_flock(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_record() -> dict:
    """What a lock file says about its holder, for the messages of those who wait."""
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": since}


def _describe_holder(path: Path) -> str:
    """Who holds a lock, from its file's record: "pid N on H (stopped; locked since T)"."""
    try:
        record = json.loads(path.read_text())
        pid, host, since = int(record["pid"]), str(record["host"]), str(record["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file records no pid)"
    if host != socket.gethostname():
        return f"pid {pid} on {host} (locked since {since})"
    return f"pid {pid} on {host} ({_process_state(pid)}; locked since {since})"


def _process_state(pid: int) -> str:
    """A local process's state, as far as a waiter cares: stopped (Ctrl-Z), running, gone
    (then a child it started holds the lock file open)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "exited, but a process it started still holds the lock"
    except PermissionError:
        return "running as another user"
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "running"
    return "stopped" if fields[0] in "Tt" else "running"
