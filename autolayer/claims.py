"""The output folder a recommend writes into: held while the run lasts, and checked before
any work.

Runs on the same data share the folder (workers of one study); a run on other data is
refused while a holder lives. What the folder already holds is replaced only when autolayer
wrote it: a recommendation of other data, or one changed by hand, only with ``overwrite``;
a file that is no recommendation, or a plot autolayer did not draw, never.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autolayer.data import LabelledDataset
from autolayer.errors import ConfigError
from autolayer.files import RECOMMENDATION, check_writable, is_ours

PLOTS = {"layers.png", "cka.png"}  # what report.recommendation draws into the output folder
CLAIM = ".autolayer-recommend"  # held by each recommend writing into an output folder
CLAIM_LOCK = f"{CLAIM}.lock"  # held while a claim is taken or dropped, then removed


def check_output_dir(output_dir: Path, data: LabelledDataset, *, overwrite: bool) -> None:
    """Refuse, before extraction rather than after an hour of it, to replace what
    ``output_dir`` holds unless it is autolayer's own: a ``recommendation.yaml`` made for
    other data, or without a matching proof (:func:`files.is_ours`: edited by hand, or
    older than the proof), only with ``overwrite``; a file that is no recommendation, or a
    plot autolayer did not draw, never. (``claim_output_dir`` has checked the folder.)"""
    import yaml

    for plot in (PLOTS & {p.name for p in output_dir.glob("*.png")}) if output_dir.is_dir() else ():
        if not is_ours(output_dir / plot, "plot"):
            raise ConfigError(
                f"{output_dir / plot} exists and is not a plot autolayer wrote; move it or "
                "choose another output folder"
            )
    path = output_dir / RECOMMENDATION
    if not path.exists():
        return
    check_writable(path, "recommendation")  # a read-only one is never replaced
    try:
        previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        fingerprint = previous["dataset"]["fingerprint"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        raise ConfigError(
            f"{path} exists and is not an autolayer recommendation; move it or choose another "
            "output folder"
        ) from None
    if overwrite:
        return
    if fingerprint != data.fingerprint:
        raise ConfigError(
            f"{path} was made for {_other_data(previous['dataset'], data)}; choose another "
            "output folder, or pass overwrite=True to replace it",
            params=("overwrite=True",),
        )
    if not is_ours(path, "recommendation"):
        raise ConfigError(
            f"{path} was changed since autolayer wrote it (or written by a version that kept "
            "no proof of it); pass overwrite=True to replace it, or choose another output folder",
            params=("overwrite=True",),
        )


@contextmanager
def claim_output_dir(output_dir: Path, fingerprint: str) -> Iterator[None]:
    """Hold ``output_dir`` for a recommend on data ``fingerprint`` while the block runs.

    Two recommends that both check the folder before either has written
    ``recommendation.yaml`` would both pass, and one would silently replace the other's.
    Each holds a shared lock on a claim file recording the data's fingerprint: a run on the
    same data shares it (a worker of the same study), a run on other data is refused while
    a holder lives. The kernel drops a killed run's lock, so a claim it left behind blocks
    nothing. Claims are taken and released under an exclusive lock (:func:`_folder_locked`),
    so the file is written, and removed by its last holder, by one run at a time."""
    check_writable(output_dir, "output folder")
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / CLAIM
    with _folder_locked(output_dir):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _take_claim(fd, path, fingerprint)
        except BaseException:
            os.close(fd)
            raise
    try:
        yield
    finally:
        with _folder_locked(output_dir):
            _release_claim(fd, path)
        if created and not any(output_dir.iterdir()):  # a run that failed before writing
            output_dir.rmdir()


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """An exclusive lock in ``folder`` for the few statements that take or drop a claim.

    The lock is on a regular file opened for writing, not on the folder: on NFS, ``flock``
    is emulated with POSIX locks, which a folder cannot take. Its holder removes the file
    when done, so a run that waited for it may then hold a removed file: it takes the new
    one instead."""
    import fcntl

    path = folder / CLAIM_LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while held: a waiter then sees its file is stale
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file ``path`` names now (not one removed since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _take_claim(fd: int, path: Path, fingerprint: str) -> None:
    """Share the claim of a live run on the same data, or write ours (none is live)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # live holders, which hold it shared
        holder = _claim_record(fd)
        if holder.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{path.parent} is in use by a recommend on other data (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}); wait for it to "
                "end, or choose another output folder"
            ) from None
    else:
        record = {"fingerprint": fingerprint, "pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    fcntl.flock(fd, fcntl.LOCK_SH)  # taken by holders only, under the folder's lock


def _claim_record(fd: int) -> dict:
    """What a claim file says (empty if unreadable: a holder of unknown data)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _release_claim(fd: int, path: Path) -> None:
    """Drop our share of the claim; its last holder removes the file."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # another run on the same data still holds it
    finally:
        os.close(fd)


def _other_data(previous: dict, data: LabelledDataset) -> str:
    """What differs: another draw or sample of the same data, or other data."""
    draw = previous.get("draw") or previous.get("sample") or {}
    source = draw.get("source_fingerprint", previous["fingerprint"])
    ours = data.draw or data.sample or {}
    if draw and source == ours.get("source_fingerprint", data.fingerprint):
        return f"another draw of the same data ({_drawn(draw)})"
    return f"other data ({previous.get('name', '?')}, fingerprint {str(source)[:12]})"


def _drawn(record: dict) -> str:
    """A recorded draw (few labels) or sample (capped train split), in words."""
    if "labels_per_class" in record:
        return f"{record['labels_per_class']} labels per class, seed {record['seed']}"
    return f"a sample of {record['max_train_samples']} training rows, seed {record['seed']}"
