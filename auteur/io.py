"""Run folders and atomic writes.

Every file the project writes goes to a temporary name in the same folder and is renamed into place, so a
kill at any moment leaves either the old file, the new file, or nothing, never half a file. Folders that a
library writes in one go (a ``datasets`` split) are built under a temporary folder name and renamed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    ``suffix`` keeps a file extension on the temporary name for writers that look at it (PyAV, PIL).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (old one removed).

    Safe under concurrent writers of one folder (processes or threads): the old folder is renamed aside and the
    new one renamed in, again until the rename lands (another writer's folder may have taken the name in
    between), so the folder is always one writer's complete output and no writer fails on another's swap."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    try:
        yield tmp
        aside = None
        for _ in range(10_000):
            try:
                os.replace(tmp, path)  # lands when the name is free (or an empty folder, or a file on POSIX)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
            aside = aside or Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}old-", dir=path.parent))
            with contextlib.suppress(FileNotFoundError):  # another writer may have moved it aside first
                os.replace(path, aside / f"{len(list(aside.iterdir()))}")
        else:
            raise OSError(errno.EBUSY, f"could not replace {path}: other writers kept taking the name")
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """One writer at a time for the output ``path``: an exclusive advisory lock (``flock``) on the hidden file
    ``.<name>.lock`` beside it, held while the command writes. A second writer fails at once with one line
    (:class:`AuteurError`) rather than racing the first; a folder whose parent cannot be written fails here too,
    before any model loads. The lock file is removed on release, and the kernel drops the lock of a killed
    process (kill -9 included). Yields ``path``. Where ``fcntl`` is missing (not POSIX) nothing is locked."""
    from auteur.errors import AuteurError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield Path(path)
        return
    path = Path(path)
    check_writable_place(path, flag)  # a file in the way, a read-only place: named plainly, nothing created
    lock = path.parent / f".{path.name}.lock"
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AuteurError(
                    f"{flag} {path} is being written by another process right now; wait for it to finish or "
                    "choose another folder"
                ) from None
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break  # the file we hold is still the lock file (its last holder may have removed it)
            except FileNotFoundError:
                pass
            os.close(fd)
    except BaseException as e:
        _remove_empty(made)
        if isinstance(e, OSError):
            raise AuteurError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a writer that opened it before re-checks the inode and retries
        os.close(fd)
        _remove_empty(made)  # the parents made for the lock, when the command wrote nothing in them


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def check_writable_place(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Raise AuteurError when the folder ``path`` could not be made or written, or another process holds its
    :func:`writer_lock`: checked without creating anything, so a command can refuse before any model loads and
    take the lock only once its other checks have passed. Returns ``path``."""
    from auteur.errors import AuteurError

    path = Path(path)
    near = path
    while not os.path.lexists(near) and near != near.parent:  # the nearest thing that exists on the way
        near = near.parent
    why = ""
    if not near.is_dir():
        why = f"{near} is not a folder"
    elif os.statvfs(near).f_flag & os.ST_RDONLY:
        why = os.strerror(errno.EROFS)
    elif not os.access(near, os.W_OK | os.X_OK):
        why = os.strerror(errno.EACCES)
    if why:
        raise AuteurError(f"{flag} {path}: cannot write there ({why})")
    lock = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return path  # no lock file: nobody is writing
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuteurError(
            f"{flag} {path} is being written by another process right now; wait for it to finish or choose "
            "another folder"
        ) from None
    except ImportError:  # pragma: no cover - not on POSIX
        pass
    finally:
        os.close(fd)  # releases the probe's lock
    return path


def clean_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove temporaries left by a killed run directly inside ``folder``; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if p.name.startswith(".") and TMP_MARK in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written in it; raise AuteurError if not."""
    from auteur.errors import AuteurError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe{TMP_MARK}", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise AuteurError(f"output folder {path} is not writable: {e.strerror or e}") from None
    return path


def read_json_object(path: str | os.PathLike, error: type[Exception]) -> dict[str, Any]:
    """Read ``path`` as a JSON object; a file that is not UTF-8 JSON or not an object raises ``error`` with
    one line naming the file (callers check the file exists first, with their own hint)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be an object")
    return data


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file``, then the header's ``__metadata__`` keys sorted: safetensors serialises the
    metadata from a hash map whose order changes from process to process, so identical contents would hash
    differently (3 hashes for 6 identical writes measured). Same bytes for the same tensors and metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    if metadata and len(metadata) > 1:
        sort_safetensors_metadata(path)
    return path


def sort_safetensors_metadata(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's header in place with its ``__metadata__`` keys in sorted order (the header's
    length and the tensor data are unchanged)."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return  # not the compact layout safetensors writes: leave the file as it is
        f.seek(8)
        f.write(text + b" " * (size - len(text)))
