"""Inter-process locks on lock files under ``<cache>/locks``.

Locks only avoid duplicate work (two processes materializing the same
snapshot) and keep a prune from racing an ingest; correctness never rests on
them alone.  portalocker is imported only when a lock is really taken: its
import costs ~60 ms, which the warm path of a descriptor must not pay.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import CacheBusy
from .fsutil import make_dirs, open_shared

DEFAULT_TIMEOUT = 600.0


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on ``path`` for the duration of the block."""
    import portalocker

    make_dirs(path.parent)
    os.close(open_shared(path, os.O_RDONLY))  # group-writable in a shared cache, before portalocker opens it
    flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
    lock = portalocker.Lock(
        str(path), mode="a", timeout=timeout, check_interval=0.02, flags=flags | portalocker.LockFlags.NON_BLOCKING
    )
    try:
        lock.acquire()
    except portalocker.LockException:
        raise CacheBusy(
            f"another process has held {path} for over {timeout:.0f}s; "
            "if no cas process is running, delete that lock file and retry"
        ) from None
    try:
        yield
    finally:
        lock.release()
