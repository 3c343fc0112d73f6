"""Writing files safely: atomically, with the user's permissions, never over someone else's.

Every file autolayer writes goes through here, so four promises hold everywhere: a reader
sees the old content or the new, never a part (temp file + rename); files get the mode the
user's umask gives (``mkstemp``/``mkdtemp`` alone would make them 0600/0700); a path's
problems (a file where a folder should be, a read-only folder, the input itself) are found
*before* the work that would write it, not after an hour of extraction; and an existing
file is replaced only on proof that autolayer wrote it (:func:`is_ours`), never on a guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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

    Writing is tested by creating (and removing) a temp file where the output will go: in
    an existing output folder, else in the nearest existing ancestor. ``os.access`` alone
    cannot tell, since it says yes to root for every path, even a folder no one may create
    files in. An existing file is refused unless we may write it, since the rename that
    replaces it needs only its folder to be writable: ``os.access`` says no to another
    user's 0644 file, and its mode bits say no to root for a file the user made read-only.
    """
    path = Path(path).expanduser()
    if path.is_dir() and not what.endswith("folder"):
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a folder; name a file in it")
    if what.endswith("folder") and path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a file")
    if path.is_file() and not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK)):
        raise ConfigError(
            f"cannot write {what} {str(path)!r}: the file is read-only, or you may not write it"
        )
    folder = path if path.is_dir() else path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: {str(folder)!r} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".autolayer-probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {what} {str(path)!r}: no file can be created in {str(folder)!r} "
            f"({exc.strerror})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


# Proof that autolayer wrote a file: an existing file at an output path is replaced only
# with it (or ``--overwrite``), never on a guess from its content, which a user's file can
# share (a hand-labelled ``row,text,label`` CSV, a 3-D float32 array of their own).
PNG_MARK = b"autolayer"  # the PNG text chunk "Software" of report's plots
PROOF_SUFFIX = ".autolayer.json"
RECOMMENDATION = "recommendation.yaml"  # recommend's result, which marks its output folder


def proof_path(path: Path) -> Path:
    """Where the proof that autolayer wrote ``path`` is kept: a hidden file beside it."""
    return path.with_name(f".{path.name}{PROOF_SUFFIX}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mark_ours(path: Path, kind: str) -> None:
    """Record that autolayer has just written ``path`` as a ``kind`` file (predictions, an
    array, scores…): its size and SHA-256, in :func:`proof_path`. A user's file cannot
    carry this by accident, and it stops matching as soon as the file is changed."""
    path = Path(path)
    record = {"written_by": "autolayer", "kind": kind, "size": path.stat().st_size}
    record["sha256"] = _sha256(path)
    atomic_write_bytes(proof_path(path), json.dumps(record).encode())


def _png_software(path: Path) -> bytes | None:
    """The value of a PNG's "Software" text chunk (read up to the image data)."""
    with path.open("rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while len(header := fh.read(8)) == 8:
            size, name = int.from_bytes(header[:4], "big"), header[4:]
            if name in (b"IDAT", b"IEND"):
                return None
            if name == b"tEXt":
                key, _, value = fh.read(size).partition(b"\0")
                if key == b"Software":
                    return value
                size = 0
            fh.seek(size + 4, os.SEEK_CUR)  # the chunk's data (unless read) and CRC
    return None


def _proven_kind(path: Path) -> str | None:
    """The kind of file autolayer wrote at ``path`` by its proof (:func:`mark_ours`), if the
    proof still matches its bytes; ``None`` for a file without one, or changed since."""
    try:
        record = json.loads(proof_path(path).read_text(encoding="utf-8"))
        if (
            isinstance(record, dict)
            and record.get("size") == path.stat().st_size
            and record.get("sha256") == _sha256(path)
        ):
            return str(record.get("kind"))
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return None


def is_ours(path: Path, kind: str) -> bool:
    """Whether autolayer wrote ``path`` as a ``kind`` file and nothing changed it since: its
    proof (:func:`mark_ours`) matches its bytes. A plot carries its own mark instead,
    autolayer's name in its PNG "Software" chunk (an image editor rewrites that chunk)."""
    path = Path(path)
    if kind == "plot":
        try:
            return _png_software(path) == PNG_MARK
        except OSError:
            return False
    return _proven_kind(path) == kind


def check_output(path: str | os.PathLike, kind: str, *, overwrite: bool | None = None) -> Path:
    """An output file that can be written now and later: a new path, or an existing file
    that autolayer wrote as this ``kind`` and nobody changed since (:func:`is_ours`);
    anything else — the input data, a study database, someone's notes, autolayer's own file
    of another kind (export's config over recommend's result) — is refused, never
    overwritten, unless ``overwrite`` (the user's ``--overwrite``; ``None`` where the
    command has no such option, so that the message does not offer it)."""
    path = check_writable(path, kind)
    if path.exists() and not overwrite and not is_ours(path, kind):
        article = "an" if kind[0] in "aeiou" else "a"
        choice = "choose another name"
        if overwrite is not None:
            choice = "pass --overwrite to replace it, or choose another name"
        other = _proven_kind(path)
        if other is not None:
            raise ConfigError(
                f"{str(path)!r} is autolayer's {other} file, not {article} {kind} file; {choice}"
            )
        raise ConfigError(
            f"{str(path)!r} exists and is not {article} {kind} file autolayer wrote (or was "
            f"changed since); {choice} (autolayer never overwrites files it did not write)"
        )
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (symlinks and ``./`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_owned_folder(
    directory: Path,
    markers: Iterable[str],
    ours: Iterable[str],
    *,
    overwrite: bool,
    what: str,
) -> None:
    """Refuse a folder autolayer may not replace; pass a missing, empty or own folder.

    A folder is autolayer's when it holds every one of ``markers`` and nothing but the
    ``ours`` files: ``overwrite`` lets such a folder be replaced. Anything else (the current
    directory, a folder of the user's files, a lone ``config.yaml`` of theirs) is never
    touched, whatever the flags.
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"cannot write {what} {str(directory)!r}: a file of that name exists")
    found = sorted(p.name for p in directory.iterdir())
    if not found:
        return
    foreign = [name for name in found if name not in set(ours)]
    if foreign or not set(markers) <= set(found):
        named = _users_first(foreign or found)
        shown = ", ".join(named[:3]) + (" …" if len(named) > 3 else "")
        raise ConfigError(
            f"{str(directory)!r} exists and holds files autolayer did not write ({shown}); "
            f"choose a new or empty folder for the {what}"
        )
    if not overwrite:
        raise ConfigError(
            f"{str(directory)!r} already holds an autolayer {what}; pass --overwrite to "
            "replace it, or choose another folder"
        )


def _users_first(names: list[str]) -> list[str]:
    """The ``names`` a refusal should show, the user's own files first, then outputs
    autolayer marked as its own. The hidden proofs beside those outputs are left out (a
    file the user never saw does not tell them what is in the way), unless nothing else
    is there."""
    proofs = {n for n in names if n.startswith(".") and n.endswith(PROOF_SUFFIX)}
    visible = [n for n in names if n not in proofs]
    marked = {n for n in visible if f".{n}{PROOF_SUFFIX}" in proofs}
    return sorted(visible, key=lambda n: n in marked) or sorted(proofs)


def replace_folder(tmp: Path, directory: Path, ours: Iterable[str], last: str) -> None:
    """Move the finished ``tmp`` folder's files to ``directory``.

    A new folder is renamed into place whole (atomic). An existing one (empty, or checked
    to be autolayer's by :func:`check_owned_folder`) keeps its inode — it may be the shell's
    current directory — and gets the new files one rename each, ``last`` (the file that
    marks a complete folder) last; own files the new set lacks are removed first.
    """
    if not directory.exists():
        os.replace(tmp, directory)
        return
    new = {p.name for p in tmp.iterdir()}
    for name in set(ours) - new:
        (directory / name).unlink(missing_ok=True)
    for name in sorted(new - {last}) + [last]:
        os.replace(tmp / name, directory / name)
    tmp.rmdir()
