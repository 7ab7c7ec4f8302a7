"""The files a model is stored from: what ``cas add`` and ``Cache.create`` read, refused clearly when unsuitable.

Symlinks are followed (Hugging Face snapshot folders are made of them): a
link's target is what is stored, so a source names the resolved file.  A
file reached through a link, or with another hardlink, is the user's own
file: ``create`` copies it rather than moving it in (a move would take it
from its folder, and making the blob read-only would change its mode).  A
missing path, an empty directory, a dangling symlink, a symlink loop, a
special file or a path a tree cannot hold is an ``InvalidInput`` naming the
file and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from ..content.tree import check_path
from ..errors import CasError, InvalidInput


class Source(NamedTuple):
    """One file to ingest: where it goes in the tree and where it is on disk."""

    path: str
    src: str  # the file to read: a symlink's target, resolved, so it can be opened with O_NOFOLLOW
    executable: bool
    movable: bool  # the scanned folder's own file (no symlink on the way, no other hardlink): create may move it


def scan(path: Path) -> list[Source]:
    """The regular files to ingest under ``path`` (a directory or one file), in path order."""
    if not os.path.lexists(path):
        raise InvalidInput(f"{path} does not exist; give a directory or a file to store")
    base = os.path.abspath(path)
    linked = os.path.islink(base)
    st = _stat(base)
    if stat.S_ISREG(st.st_mode):
        return [_source(os.path.basename(base), base, st, linked, linked)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is neither a regular file nor a directory")
    out: list[Source] = []
    _walk(base, "", linked, {(st.st_dev, st.st_ino)}, out)
    if not out:
        raise InvalidInput(f"{path} contains no files; there is nothing to store")
    return out


def _walk(base: str, rel: str, linked: bool, seen_dirs: set[tuple[int, int]], out: list[Source]) -> None:
    """Add the files under ``base/rel`` to ``out``; ``linked``: reached through a symlinked directory;
    ``seen_dirs`` are the directories above (loops)."""
    here = os.path.join(base, rel) if rel else base
    try:
        names = sorted(os.listdir(here))
    except OSError as e:
        raise InvalidInput(f"cannot list {here}: {_why(e)}") from None
    for n in names:
        full = os.path.join(here, n)
        relpath = f"{rel}/{n}" if rel else n
        st = _lstat(full)
        is_link = stat.S_ISLNK(st.st_mode)
        if is_link:
            st = _stat(full)
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                raise InvalidInput(f"{full} is a symlink loop (it leads back to a directory already included)")
            _walk(base, relpath, linked or is_link, seen_dirs | {key}, out)
        elif stat.S_ISREG(st.st_mode):
            out.append(_source(relpath, full, st, is_link, linked))
        else:
            raise InvalidInput(f"{full} is not a regular file (a socket, pipe or device); remove it and try again")


def _lstat(full: str) -> os.stat_result:
    try:
        return os.lstat(full)
    except OSError as e:
        raise InvalidInput(f"{full} cannot be read: {_why(e)}") from None


def _stat(full: str) -> os.stat_result:
    """What a path leads to, symlinks followed; a dangling link or a loop names where it points."""
    try:
        return os.stat(full)
    except FileNotFoundError:
        raise InvalidInput(f"{full} is a dangling symlink{_target(full)}; fix or remove it and try again") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidInput(f"{full} is a symlink loop{_target(full)}; fix or remove it and try again") from None
        raise InvalidInput(f"{full} cannot be read: {_why(e)}") from None


def _target(full: str) -> str:
    try:
        return f" (to {os.readlink(full)!r})"
    except OSError:
        return ""


def _source(relpath: str, full: str, st: os.stat_result, is_link: bool, linked: bool) -> Source:
    try:
        check_path(relpath)
    except CasError as e:
        raise InvalidInput(f"{full}: cannot be stored ({e})") from None
    src = os.path.realpath(full) if is_link else full
    return Source(relpath, src, bool(st.st_mode & 0o111), not (is_link or linked) and st.st_nlink == 1)


def _why(e: OSError) -> str:
    return e.strerror or str(e)
