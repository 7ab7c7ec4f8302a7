"""Leases on snapshots: a service using a model keeps `cas rm` and `cas verify` from deleting it under it.

A resolving process holds a shared ``flock`` on ``<cache>/locks/use-<root>``
for the rest of its life (a descriptor's reference is fixed for the life of
the process).  Removal takes that lock exclusively without waiting; when a
process holds it, the snapshot directory stays (its blobs and tree may go:
the snapshot's hardlinks keep the bytes) until a later ``cas verify`` finds
it unused.  ``fcntl`` directly, not portalocker (60 ms to import): this runs
on the warm path and costs a few microseconds.  Without ``fcntl`` (Windows)
there are no leases.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..fsutil import make_dirs, open_shared

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
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        try:
            make_dirs(lock_dir)
            fd = open_shared(path, os.O_RDONLY)
        except OSError:
            return  # a read-only cache: nothing can remove the snapshot either
    except OSError:
        return
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a removal in progress; the caller then re-checks
    _held[path] = fd


@contextlib.contextmanager
def unused(lock_dir: str, root: str) -> Iterator[bool]:
    """Yield whether no process holds a lease on ``root``; while True, none can take one."""
    path = f"{lock_dir}/use-{root}"
    if fcntl is None:
        yield True
        return
    own = _held.pop(path, None)
    if own is not None:  # this process's own lease never stops it removing a model
        os.close(own)
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
