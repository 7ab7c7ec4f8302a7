"""The files a model is stored from: what ``cas add`` and ``Cache.create`` read, refused clearly when unsuitable.

Symlinks to files are followed (Hugging Face snapshot folders are made of
them); a missing path, an empty directory, a dangling symlink, a symlink
loop, a special file or a path a tree cannot hold is an ``InvalidInput``
naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from ..errors import CasError, InvalidInput
from ..tree import check_path


class Source(NamedTuple):
    """One file to ingest: where it goes in the tree and where it is on disk."""

    path: str
    src: str
    executable: bool


def scan(path: Path) -> list[Source]:
    """The regular files to ingest under ``path`` (a directory or one file), in path order."""
    if not os.path.lexists(path):
        raise InvalidInput(f"{path} does not exist; give a directory or a file to store")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidInput(f"{path} cannot be read: {_why(e)}") from None
    base = os.path.abspath(path)
    if stat.S_ISREG(st.st_mode):
        return [_source(os.path.basename(base), base, st)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is neither a regular file nor a directory")
    out: list[Source] = []
    _walk(base, "", {(st.st_dev, st.st_ino)}, out)
    if not out:
        raise InvalidInput(f"{path} contains no files; there is nothing to store")
    return out


def _walk(base: str, rel: str, seen_dirs: set[tuple[int, int]], out: list[Source]) -> None:
    """Add the files under ``base/rel`` to ``out``; ``seen_dirs`` are the directories above (loops)."""
    here = os.path.join(base, rel) if rel else base
    try:
        names = sorted(os.listdir(here))
    except OSError as e:
        raise InvalidInput(f"cannot list {here}: {_why(e)}") from None
    for n in names:
        full = os.path.join(here, n)
        relpath = f"{rel}/{n}" if rel else n
        st = _stat(full)
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                raise InvalidInput(f"{full} is a symlink loop (it leads back to a directory already included)")
            _walk(base, relpath, seen_dirs | {key}, out)
        elif stat.S_ISREG(st.st_mode):
            out.append(_source(relpath, full, st))
        else:
            raise InvalidInput(f"{full} is not a regular file (a socket, pipe or device); remove it and try again")


def _stat(full: str) -> os.stat_result:
    try:
        return os.stat(full)
    except FileNotFoundError:
        raise InvalidInput(f"{full} is a dangling symlink; fix or remove it and try again") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidInput(f"{full} is a symlink loop; fix or remove it and try again") from None
        raise InvalidInput(f"{full} cannot be read: {_why(e)}") from None


def _source(relpath: str, full: str, st: os.stat_result) -> Source:
    try:
        check_path(relpath)
    except CasError as e:
        raise InvalidInput(f"{full}: cannot be stored ({e})") from None
    return Source(relpath, full, bool(st.st_mode & 0o111))


def _why(e: OSError) -> str:
    return e.strerror or str(e)
