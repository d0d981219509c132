"""Atomic file writes: a temporary file in the same folder, renamed into place when complete.

Readers (a resumed download, the app, a second process) never see a half-written file, and an
interrupted write leaves the previous version untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give: mkstemp's private 0600 is not meant
    for datasets and models that other users and tools read."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""Errors that mean the disk (or the user's quota) cannot hold what is written."""


def free_bytes(folder: Path) -> int:
    """Free space for an unprivileged writer on the disk holding ``folder``."""
    return shutil.disk_usage(folder).free


def allocate(path: Path, size: int) -> None:
    """Give the file at ``path`` ``size`` bytes of real disk blocks, so that writing through a
    memory map of it can never fail later (a map the disk cannot back kills with SIGBUS);
    raises OSError (ENOSPC) now if the disk cannot hold it."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            block = b"\0" * (1 << 20)  # a filesystem without fallocate: write the zeros
            os.lseek(fd, os.fstat(fd).st_size, os.SEEK_SET)
            for start in range(os.fstat(fd).st_size, size, len(block)):
                os.write(fd, block[:min(len(block), size - start)])
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_parts(folder: Path) -> int:
    """Delete the temporary files of writers that were killed before they could clean up.

    Call it only while holding the folder's lock: a live writer's temporary file would vanish.
    """
    removed = 0
    for path in Path(folder).glob(".*.part"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def file_lock(lock_file: Path, *, busy: Exception | None = None) -> Iterator[bool]:
    """Hold an OS lock (flock) on ``lock_file`` for the block; yields whether it is held.

    With ``busy``, the lock is required: ``busy`` is raised at once if another process holds it.
    Without, the caller waits its turn, and where no lock can be taken at all (a read-only
    folder, a file system without locks) it goes on unlocked. The kernel drops the lock when
    its holder exits, even by SIGKILL, so no stale lock survives.
    """
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a+")
    except OSError:
        if busy is not None:
            raise
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            raise busy from None
        except OSError:
            if busy is not None:
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

