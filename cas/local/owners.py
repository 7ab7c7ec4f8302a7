"""Whether the writer of a temporary still lives: a lock it holds, never its PID.

Two containers sharing a cache volume (or two hosts sharing it over NFS) do
not see each other's processes: a PID says only whether a process of *this*
PID namespace runs.  So a process that leaves a temporary in ``tmp/`` while
it does not hold the objects lock (a ``create()`` staging folder, filled for
as long as the user likes; a ref being replaced) first takes an exclusive
``flock`` on ``locks/owner-<token>`` and holds it for its life; its temporaries'
names carry that token (``cas.system.names.temp_name``).  gc and verify remove such a
temporary only once they can take that lock themselves.  Everything else in
``tmp/`` and ``snapshots/`` is written under the objects lock, which gc and
verify hold exclusively, so what they find of it is dead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..system.dirs import make_dirs, open_shared
from ..system.files import still_named
from ..system.names import process_token, token_of_temp

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no shared volumes between namespaces to guard
    fcntl = None  # type: ignore[assignment]

PREFIX = "owner-"
_claimed: dict[str, int] = {}  # lock file: the descriptor holding it, for this process's life


def claim(lock_dir: str) -> None:
    """Hold this process's owner lock in a cache (once per cache and process) before leaving temporaries."""
    path = f"{lock_dir}/{PREFIX}{process_token()}"
    if fcntl is None or path in _claimed:
        return
    make_dirs(lock_dir)
    while True:
        fd = open_shared(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else takes it but a gc judging it, for an instant
        if still_named(fd, path):
            _claimed[path] = fd
            return
        os.close(fd)  # a gc found the file free and removed it just now: make it anew


def alive(lock_dir: str, temp: str) -> bool:
    """Whether the process that made the temporary named ``temp`` still runs, on any host or namespace that
    shares this cache (changes nothing)."""
    token = token_of_temp(temp)
    if token is None:
        return False
    path = f"{lock_dir}/{PREFIX}{token}"
    if fcntl is None or path in _claimed:
        return True
    with _locked_if_free(path) as free:
        return not free


def sweep(lock_dir: str) -> list[str]:
    """Remove the owner lock files of processes that have ended (gc); returns their paths."""
    try:
        paths = [f"{lock_dir}/{n}" for n in sorted(os.listdir(lock_dir)) if n.startswith(PREFIX)]
    except FileNotFoundError:
        return []
    removed = []
    for path in paths:
        with _locked_if_free(path) as free:
            if free and path not in _claimed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # while locked: an owner opening it now finds it unnamed and makes it anew
                removed.append(path)
    return removed


@contextlib.contextmanager
def _locked_if_free(path: str) -> Iterator[bool]:
    """Yield whether no process holds the owner lock at ``path`` (a missing file is free), holding it meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
