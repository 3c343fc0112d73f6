"""Content-addressed, chunked, atomic on-disk store of extracted embedding arrays.

An entry is a folder named by a hash of everything the array depends on (model identity,
text fingerprint, pooling, max_length, dtype, layers). Extraction writes fixed-size chunks
as it goes, each by temp file + rename, so an interrupted run resumes at the first missing
chunk. When all chunks exist they are assembled into one memory-mappable ``embeddings.npy``
and ``meta.json`` (with the array's SHA-256) is written last: an entry without ``meta.json``
is unfinished, an entry whose array does not match its recorded size and hash is corrupt and
is recomputed, never silently used. A per-entry file lock makes concurrent writers (several
search workers sharing one cache folder) wait for each other instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autolayer.errors import CacheError
from autolayer.files import atomic_save_npy, atomic_write_bytes, user_mode

logger = logging.getLogger("autolayer")

FORMAT_VERSION = 1
ARRAY = "embeddings.npy"
META = "meta.json"
TIMING = "timing.json"
_VERIFIED: set[tuple] = set()  # (path, inode, size, mtime) of arrays hashed in this process


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

    def read_chunk(self, index: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """A finished chunk of the expected shape, or None (missing or unreadable)."""
        path = self.chunk_path(index)
        if not path.exists():
            return None
        try:
            chunk = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            logger.warning("chunk %s is unreadable (%s): recomputing it", path, exc)
            return None
        return chunk if chunk.shape == shape else None

    def start_chunks(self, layout: dict) -> None:
        """Keep an unfinished run's chunks only if they were cut the same way (hold the lock):
        chunks of another chunk size have the same shape but other rows."""
        folder = self.directory / "chunks"
        wanted = json.dumps(layout, sort_keys=True)
        try:
            same = (folder / "layout.json").read_text() == wanted
        except OSError:
            same = False
        if not same:
            shutil.rmtree(folder, ignore_errors=True)
            atomic_write_bytes(folder / "layout.json", wanted.encode())

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
                    raise CacheError(f"chunk {index} of {self.directory} vanished before assembly")
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
    def lock(self) -> Iterator[None]:
        """Exclusive per-entry lock so two processes never extract the same entry at once."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
