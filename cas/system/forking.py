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
exist from ``import cas`` on, so a fork can never race their creation: ``SQLITE`` around every call into
the chunk index, ``LOCK_FILES`` around taking and dropping a lock file (a lock file a thread had opened but
not yet registered at the fork would stay locked in the child for ever, once the parent locked it and
died).  The descriptor resets its own state in a forked child too (``os.register_at_fork``).
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
LOCK_FILES = ForkGuard()  # opening, locking and registering a lock file, and unlocking it: never copied half done
GUARDS = (SQLITE, LOCK_FILES)  # taken in this order before a fork
IMPORT_WAIT = 2.0  # seconds a fork waits at most for other threads to finish the imports they are in
IMPORT_STALL = 0.1  # seconds without an import finishing after which it waits no longer


def _after_fork_in_child() -> None:
    _drop_half_imported()
    for guard in GUARDS:
        guard.after_fork_in_child()


def _after_fork_in_parent() -> None:
    for guard in reversed(GUARDS):
        guard.after_fork_in_parent()


def _half_imported() -> list[str]:
    """The modules other threads are importing now (the forking thread's own imports left out): those whose
    import lock another thread holds (it may still be finding the module, not yet in ``sys.modules``), and
    those half initialized."""
    import_locks = _import_locks()
    if import_locks is None:  # an interpreter without them: nothing known
        return []
    me, names = get_ident(), set()
    for name, ref in list(import_locks.items()):
        owner = getattr(ref() if callable(ref) else None, "owner", None)
        if owner is not None and owner != me:
            names.add(name)
    for name, module in list(sys.modules.items()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            ref = import_locks.get(name)
            if getattr(ref() if callable(ref) else None, "owner", None) != me:
                names.add(name)
    return sorted(names)


def _import_locks() -> dict[str, object] | None:
    """importlib's import lock of each module being imported, by name (private to importlib: no other way to
    learn what another thread is importing)."""
    locks = getattr(sys.modules.get("importlib._bootstrap"), "_module_locks", None)
    return locks if isinstance(locks, dict) else None


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
    for guard in GUARDS:
        guard.before_fork()


def _drop_half_imported() -> None:
    """Forget what another thread was still importing at the fork (it began just then, or took longer than
    the wait): each such module and its submodules, with their import locks (held by a thread that is not
    here: the next import of them would wait for ever), are imported afresh here."""
    half = _half_imported()
    import_locks = _import_locks()
    if not half or import_locks is None:
        return
    prefixes = tuple(f"{name}." for name in half)
    for name in [n for n in sys.modules if n in half or n.startswith(prefixes)]:
        del sys.modules[name]
    for name in [n for n in import_locks if n in half or n.startswith(prefixes)]:
        import_locks.pop(name, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
