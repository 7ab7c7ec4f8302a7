"""Inter-process locks on lock files under ``<cache>/locks``.

Locks only avoid duplicate work (two processes materializing the same
snapshot) and keep a prune from racing an ingest; correctness never rests on
them alone.  ``locked`` waits in this thread; ``alocked`` waits with
``asyncio.sleep``, so a task waiting for another process's pull can be
cancelled.  On POSIX a lock is ``fcntl.flock``, what portalocker does there,
taken directly: importing portalocker costs 25-60 ms, which every ``cas``
command that writes (materialize, add, pull) paid; it is imported only where
there is no ``fcntl`` (Windows), and only when a lock is really taken.

A lock file is opened read-only (``flock`` needs no write access), so a
user who may only read a shared cache still locks the files its writers
made.  On a read-only filesystem a lock file that is missing cannot be
made, and no lock is taken: nothing can write there, and a command that
needs to write is refused before it starts (``LocalCache.writing``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from _thread import get_ident
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..errors import CacheBusy
from ..system.dirs import make_dirs, open_shared
from ..system.forking import LOCK_FILES

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: portalocker
    fcntl = None  # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

DEFAULT_TIMEOUT = 600.0
POLL = 0.02  # seconds between attempts on a held lock

# Every lock this process holds, with the thread holding it.  A forked child shares each lock's open file with
# its parent; the copies of locks other threads held are closed in the child, so that a parent that dies holding
# one (killed mid-pull) does not leave it held for ever by a child that never knew it.
_held: dict[IO[Any], int] = {}


class Locks:
    """The lock files of one cache, ``locks/<name>``: ``objects`` (shared by writers of objects, exclusive
    for pruning and verify), ``ref-<name>``, ``snapshot-<root>``, ``pull-<root>``, ``resolve-<name>``."""

    def __init__(self, directory: str):
        self._dir = directory

    @property
    def dir(self) -> str:
        return self._dir

    def hold(self, name: str, *, shared: bool = False, timeout: float = DEFAULT_TIMEOUT
             ) -> contextlib.AbstractContextManager[None]:  # fmt: skip
        """Hold ``locks/<name>``; CacheBusy after ``timeout`` seconds (0: one attempt, for work that can wait)."""
        return locked(Path(self._dir, name), shared=shared, timeout=timeout)

    def ahold(self, name: str, *, shared: bool = False) -> contextlib.AbstractAsyncContextManager[None]:
        """``hold`` for a coroutine: a cancelled task stops waiting."""
        return alocked(Path(self._dir, name), shared=shared)


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on ``path`` for the duration of the block."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = _try_lock(path, shared)
            break
        except BlockingIOError:
            _check_deadline(path, deadline, timeout)
            time.sleep(min(POLL, timeout))
    try:
        yield
    finally:
        _unlock(held)


@contextlib.asynccontextmanager
async def alocked(path: Path, *, shared: bool = False, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[None]:
    """``locked`` for a coroutine: the task can be cancelled while it waits."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        try:
            held = _try_lock(path, shared)
            break
        except BlockingIOError:
            _check_deadline(path, deadline, timeout)
            await asyncio.sleep(POLL)
    try:
        yield
    finally:
        _unlock(held)


def _try_lock(path: Path, shared: bool) -> IO[Any] | None:
    """The open lock file, locked (None: none is needed, see above); BlockingIOError while another process
    holds it.  A fork waits until it is registered or closed: nothing in here waits on another process."""
    with LOCK_FILES:
        fd = _open(path)
        if fd is None:
            return None
        handle = os.fdopen(fd, "rb", buffering=0)  # kept open while the lock is held
        try:
            _lock_now(handle, shared)
        except BaseException:
            handle.close()
            raise
        _held[handle] = get_ident()
        return handle


def _open(path: Path) -> int | None:
    """The lock file opened read-only, made if missing (group-writable in a shared cache); None where it is
    missing on a read-only filesystem."""
    try:
        make_dirs(path.parent)
        return open_shared(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.EROFS:
            raise
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # made before the filesystem became read-only
    except FileNotFoundError:
        return None


def _lock_now(handle: IO[Any], shared: bool) -> None:
    """Lock without waiting; BlockingIOError while another process holds it.  ``flock`` where there is
    fcntl; portalocker (25 ms to import) only where there is not."""
    if fcntl is not None:
        fcntl.flock(handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return
    import portalocker

    flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
    try:
        portalocker.lock(handle, flags | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.LockException:
        raise BlockingIOError from None


def _unlock(handle: IO[Any] | None) -> None:
    if handle is None:  # a read-only filesystem: nothing was locked
        return
    with LOCK_FILES:
        if _held.pop(handle, None) is None:  # closed after a fork: the lock was another thread's, in the parent
            return
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        else:
            import portalocker

            portalocker.unlock(handle)
        handle.close()


def _after_fork_in_child() -> None:
    """Close the child's copies of the locks the parent's other threads hold (closing a copy leaves the
    parent's lock as it is; the forking thread's own locks stay, and it unlocks them as it goes on)."""
    me = get_ident()
    for handle, thread in list(_held.items()):
        if thread != me:
            del _held[handle]
            handle.close()


LOCK_FILES.in_child(_after_fork_in_child)


def _check_deadline(path: Path, deadline: float, timeout: float) -> None:
    if time.monotonic() >= deadline:
        raise CacheBusy(
            f"another process has held {path} for over {timeout:.0f}s; "
            "if no cas process is running, delete that lock file and retry"
        )
