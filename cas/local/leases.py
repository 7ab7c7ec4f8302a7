"""Leases on snapshots: a service using a model keeps `cas rm`, `cas gc` and `cas verify` from deleting it.

A resolving process holds a shared ``flock`` on ``<cache>/locks/use-<root>``
for the rest of its life (a descriptor's reference is fixed for the life of
the process).  Removal takes that lock exclusively without waiting; when a
process holds it, the snapshot directory stays (its blobs and tree may go:
the snapshot's hardlinks keep the bytes) until a later ``cas verify`` finds
it unused.  A removal that finds it free unlinks the lease file, so the
file's mtime says when a process first used the model since then: gc's
recency, with no write on the warm path but that file's creation.
``fcntl`` directly, not portalocker (60 ms to import): this runs on the
warm path and costs a few microseconds.  Without ``fcntl`` (Windows) there
are no leases.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from ..errors import CasError
from ..system.dirs import make_dirs, open_shared
from ..system.files import still_named

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_held: dict[str, int] = {}  # lock path: the descriptor holding it, for this process's life


def hold(lock_dir: str, root: str) -> None:
    """Take a shared lease on a snapshot for the life of this process (once per root)."""
    path = f"{lock_dir}/use-{root}"
    if fcntl is None or path in _held:
        return
    while (fd := _open(lock_dir, path)) is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a removal in progress; the caller then re-checks
        if still_named(fd, path):
            _held[path] = fd
            return
        os.close(fd)  # a removal or gc unlinked the file while this waited: a lease on it would hold nothing


READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)  # a cache this process cannot write: no lease is needed


def _open(lock_dir: str, path: str) -> int | None:
    """The lease file, opened (made if missing); None only where the cache is read-only to this process (nothing
    it runs can remove the snapshot).  Any other failure (out of file descriptors, a full disk) is an error:
    a model resolved without its lease could be removed under the service."""
    try:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            make_dirs(lock_dir)
            return open_shared(path, os.O_RDONLY)
    except OSError as e:
        if e.errno in READ_ONLY:
            return None
        raise CasError(f"could not take the lease that keeps removals from deleting a model in use ({path}): "
                       f"{e.strerror}{_advice(e)}") from None  # fmt: skip


def _advice(e: OSError) -> str:
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return "; this process has too many files open: raise its limit (ulimit -n) or close files it does not need"
    return "; fix that and resolve the model again"


def first_use(lock_dir: str, root: str) -> float | None:
    """When a process first leased ``root`` since the lease file was last removed (its mtime): how gc
    learns that a model was used without the warm path writing anything but that file."""
    try:
        return os.stat(f"{lock_dir}/use-{root}").st_mtime
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def unused(lock_dir: str, root: str, *, mine_count: bool = False) -> Iterator[bool]:
    """Yield whether no process holds a lease on ``root``; while True, none can take one, and the lease file
    is removed afterwards.  This process's own lease stops it only with ``mine_count`` (gc, not ``cas rm``)."""
    path = f"{lock_dir}/use-{root}"
    if fcntl is None:
        yield True
        return
    if path in _held:
        if mine_count:
            yield False
            return
        os.close(_held.pop(path))
    make_dirs(lock_dir)
    fd = open_shared(path, os.O_RDONLY)  # flock needs no write access: another user's lease file will do
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def held(lock_dir: str, root: str) -> bool:
    """Whether a process (this one included) holds a lease on ``root`` now; changes nothing (a dry run)."""
    path = f"{lock_dir}/use-{root}"
    if fcntl is None:
        return False
    if path in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
