"""A child forked while other threads of its parent were working: what they left half done is undone.

Only the forking thread goes on in a child (gunicorn ``--preload``, multiprocessing's 'fork').  A module
another thread was importing at that moment (a pull imports its machinery lazily, in its own thread) would
stay half initialized in the child for ever: every later import of it fails ("partially initialized
module", or a name its package never bound) or waits on its import lock, whose owner is not there, and its
code may have been inside a C library's lock (OpenSSL's).  So a fork first waits, briefly, until no other
thread is in an import; what one began in the instant before the fork is dropped in the child, with its
submodules and import locks, and imported afresh there.

A ``ForkGuard`` is a lock a fork waits for, so that no thread is inside what it guards (a call into SQLite,
a transaction) when the process forks; the child then runs what was registered to reset it.  The guards
exist from ``import cas`` on, so a fork can never race their creation.  The descriptor and the cache's
locks reset their own state in a forked child too (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import sys
import time
from _thread import allocate_lock, get_ident
from collections.abc import Callable


class ForkGuard:
    """A lock held around work a fork must not copy half done; ``in_child`` callbacks reset what the child
    inherited (they run with no other thread inside the guard)."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._in_child: list[Callable[[], None]] = []

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def in_child(self, reset: Callable[[], None]) -> None:
        """Call ``reset`` in every child forked from now on."""
        self._in_child.append(reset)

    def before_fork(self) -> None:
        self._lock.acquire()  # waits until no thread is inside

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        for reset in self._in_child:
            reset()
        self._lock.release()


SQLITE = ForkGuard()  # every call into SQLite (the chunk index): a connection must not be copied mid-call
IMPORT_WAIT = 2.0  # seconds a fork waits at most for other threads to finish the imports they are in
IMPORT_STALL = 0.1  # seconds without an import finishing after which it waits no longer


def _after_fork_in_child() -> None:
    _drop_half_imported()
    SQLITE.after_fork_in_child()


def _half_imported() -> list[str]:
    """The modules other threads are importing now (the forking thread's own imports left out)."""
    import_locks = getattr(sys.modules.get("importlib._bootstrap"), "_module_locks", None)
    if not isinstance(import_locks, dict):  # an interpreter without them: nothing known
        return []
    me, names = get_ident(), []
    for name, module in list(sys.modules.items()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            ref = import_locks.get(name)
            lock = ref() if callable(ref) else None
            if lock is None or getattr(lock, "owner", None) != me:
                names.append(name)
    return names


def _before_fork() -> None:
    """Let other threads finish the imports they are in (a module's code may be inside a C library's lock:
    OpenSSL's, as aiohttp makes its SSL context on import), for at most ``IMPORT_WAIT`` seconds, and no longer
    than ``IMPORT_STALL`` without progress: an import can wait on a lock another fork hook holds (logging's)."""
    start = changed = time.monotonic()
    half = _half_imported()
    while half and (now := time.monotonic()) - start < IMPORT_WAIT and now - changed < IMPORT_STALL:
        time.sleep(0.002)
        if (latest := _half_imported()) != half:
            half, changed = latest, time.monotonic()
    SQLITE.before_fork()


def _drop_half_imported() -> None:
    """Forget what another thread was still importing at the fork (it began just then, or took longer than
    the wait): each such module and its submodules, with their import locks, are imported afresh here."""
    half = _half_imported()
    if not half:
        return
    import_locks = getattr(sys.modules["importlib._bootstrap"], "_module_locks")  # noqa: B009 - private to importlib
    prefixes = tuple(f"{name}." for name in half)
    for name in [n for n in sys.modules if n in half or n.startswith(prefixes)]:
        del sys.modules[name]
        import_locks.pop(name, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=SQLITE.after_fork_in_parent, after_in_child=_after_fork_in_child
    )
