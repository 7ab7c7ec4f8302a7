"""Directories: made (durably where a name is about to be published in them), shared by a group, removed.

A cache whose root is group-writable and setgid (``chmod 2775``, as git's
``core.sharedRepository=group``) is shared by the users of that group: a
directory made inside such a one is made group-writable and setgid too, and
a file that others must write later (locks, leases, part files, the chunk
index) is made group-writable, whatever the umask of the process that
creates them.  Nothing is ever made writable by others than the group.
"""

from __future__ import annotations

import os
import stat

from .durable import fsync_dir
from .names import temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# shutil (with zlib, bz2 and lzma) is imported where used: a service's warm path needs none of it.


_SHARED = stat.S_ISGID | stat.S_IWGRP  # a directory a group shares: group-writable, new entries in its group


def _shared(directory: str) -> bool:
    return os.stat(directory).st_mode & _SHARED == _SHARED


def make_dirs(path: str | os.PathLike[str]) -> list[str]:
    """``mkdir -p``; a directory made inside a shared one (see above) is shared too.  Returns the directories
    it made, outermost first (none: ``path`` was there)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    made: list[str] = []
    try:
        os.mkdir(path)
    except FileExistsError:
        return []
    except FileNotFoundError:
        if parent == path:
            raise
        made = make_dirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            return made
    if _shared(parent):
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_IRWXG | stat.S_ISGID)
    return [*made, path]


def holding_dirs(made: list[str]) -> list[str]:
    """The directories whose entries ``make_dirs`` changed when it made ``made``: each one's parent."""
    return sorted({os.path.dirname(d) for d in made})


def make_durable_dirs(path: str | os.PathLike[str]) -> None:
    """``make_dirs`` for a folder a name is about to be published in: the parent of every directory it makes is
    flushed, so after a power loss the folders leading to the name are there whenever the name is.  A folder
    there already (the usual case) costs nothing.  (A folder another process has just made, and not flushed
    yet, is taken as it is: only a lock would close that window.)"""
    for d in reversed(holding_dirs(make_dirs(path))):
        fsync_dir(d)


def open_shared(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``O_CREAT``; a file this process owns in a shared directory is made group-readable
    and -writable, so the group's other users can lock, resume or update it."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        st = os.fstat(fd)
        mine_and_private = st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWGRP
        if mine_and_private and _shared(os.path.dirname(os.path.abspath(path))):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_writable_tree(path: Path) -> None:
    """Give the owner write permission on every directory below ``path`` that this process cannot write,
    so it can be removed (PermissionError: a read-only directory of another user)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
            if os.access(d, os.W_OK | os.X_OK):
                continue
            try:
                os.chmod(d, 0o755)
            except FileNotFoundError:
                pass


TRASH = ".trash-"


def remove_tree(path: Path, *, move_aside: bool = True) -> bool:
    """Remove a directory tree, including read-only snapshot directories; False if it was moved aside.

    In a shared cache a read-only tree another user made cannot be opened up by this one (only an owner
    may chmod): it is renamed to a ``.trash-`` name beside it, which needs only its parent to be
    writable, and is removed by its owner's next ``cas verify``.  ``move_aside=False`` raises instead."""
    if not os.path.lexists(path):
        return True
    try:
        make_writable_tree(path)
    except PermissionError:
        if not move_aside:
            raise
        os.rename(path, os.path.join(os.path.dirname(path), temp_name(TRASH)))
        return False
    import shutil

    shutil.rmtree(path, ignore_errors=False)
    return True
