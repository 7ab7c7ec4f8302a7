"""A child forked while other threads of its parent were working: what they left half done is undone.

Only the forking thread goes on in a child (gunicorn ``--preload``, multiprocessing's 'fork').  A module
another thread was importing at that moment (a pull imports its machinery lazily, in its own thread) would
stay half initialized in the child for ever: every later import of it fails ("partially initialized
module") or waits on its import lock, whose owner is not there.  Such modules are dropped from
``sys.modules`` with their import locks, so the child imports them afresh.

A ``ForkGuard`` is a lock a fork waits for, so that no thread is inside what it guards (a call into SQLite,
a transaction) when the process forks; the child then runs what was registered to reset it.  The guards
exist from ``import cas`` on, so a fork can never race their creation.  The descriptor and the cache's
locks reset their own state in a forked child too (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import sys
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


def _after_fork_in_child() -> None:
    _drop_half_imported()
    SQLITE.after_fork_in_child()


def _drop_half_imported() -> None:
    """Forget the modules other threads were importing when this process was forked."""
    bootstrap = sys.modules.get("importlib._bootstrap")
    import_locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(import_locks, dict):  # an interpreter without them: nothing known to undo
        return
    me = get_ident()
    for name, module in list(sys.modules.items()):
        if not getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue
        ref = import_locks.get(name)
        lock = ref() if callable(ref) else None
        if lock is not None and getattr(lock, "owner", None) == me:
            continue  # the forking thread's own import: it finishes it
        del sys.modules[name]
        import_locks.pop(name, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=SQLITE.before_fork, after_in_parent=SQLITE.after_fork_in_parent, after_in_child=_after_fork_in_child
    )
