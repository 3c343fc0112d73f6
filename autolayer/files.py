"""Writing files safely: atomically, with the user's permissions, never over someone else's.

Every file autolayer writes goes through here, so three promises hold everywhere: a reader
sees the old content or the new, never a part (temp file + rename); files get the mode the
user's umask gives (``mkstemp``/``mkdtemp`` alone would make them 0600/0700); and a path's
problems (a file where a folder should be, a read-only folder, the input itself) are found
*before* the work that would write it, not after an hour of extraction.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from autolayer.errors import ConfigError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def user_mode(path: Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: Path, write: Callable[[str], object], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` then move the temp file over ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        user_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes durably (fsync) so readers see the old content or the new, never a part."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")


def temp_dir(target: Path) -> Path:
    """A new folder beside ``target`` (same file system, so it can be renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    user_mode(tmp, directory=True)
    return tmp


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, in one line, if ``path`` cannot be written later (checked before the work).

    Creates no file and no folder: the nearest existing ancestor must be a writable folder.
    """
    path = Path(path).expanduser()
    if path.is_dir() and not what.endswith("folder"):
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {what} {str(path)!r}: permission denied")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (symlinks and ``./`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_owned_folder(
    directory: Path, marker: str, ours: Iterable[str], *, overwrite: bool, what: str
) -> None:
    """Refuse a folder autolayer may not replace; pass a missing, empty or own folder.

    A folder is autolayer's when it holds ``marker`` and nothing but the ``ours`` files:
    ``overwrite`` lets such a folder be replaced. Anything else (the current directory, a
    folder of the user's files) is never emptied, whatever the flags.
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"cannot write {what} {str(directory)!r}: a file of that name exists")
    found = sorted(p.name for p in directory.iterdir())
    if not found:
        return
    foreign = [name for name in found if name not in set(ours)]
    if foreign or marker not in found:
        shown = ", ".join(foreign[:3] or found[:3]) + (" …" if len(foreign) > 3 else "")
        raise ConfigError(
            f"{str(directory)!r} exists and holds files autolayer did not write ({shown}); "
            f"choose a new or empty folder for the {what}"
        )
    if not overwrite:
        raise ConfigError(
            f"{str(directory)!r} already holds an autolayer {what}; pass --overwrite to "
            "replace it, or choose another folder"
        )


def replace_folder(tmp: Path, directory: Path) -> None:
    """Move the finished ``tmp`` folder to ``directory``, replacing it if present.

    The old folder is renamed aside first and removed only after the new one is in place,
    so at every instant one complete folder exists. Callers check the old folder is
    autolayer's (:func:`check_owned_folder`) before doing any work.
    """
    old = None
    if directory.exists() and any(directory.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        os.replace(directory, old / "folder")
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
