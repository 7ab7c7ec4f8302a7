"""A repository in a local folder (``file://PATH``): the same folder ``cas serve`` serves.

Reads refuse anything but regular files (a device or FIFO planted in the
folder must not hang or flood a pull); writes go through a temporary name
in ``.tmp/`` and are linked (created only if absent) or renamed (listings,
under ``.tmp/update.lock``) into place, so readers never see a partial
object, and flushed with any folder made for them before the call returns,
so a push's ref is never durable before what it names; a removal unlinks.
``cas serve`` takes the same lock, so both can share a folder.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import NotFound, RepoError
from ..system.files import atomic_write, write_new
from .backend import Change
from .format import MAX_DOC_BYTES

T = TypeVar("T")
UPDATE_LOCK = ".tmp/update.lock"  # held by every writer of a listing in a repository folder, cas serve included

_WRITE_ADVICE = {
    errno.EACCES: "give this user write access to the folder",
    errno.EPERM: "give this user write access to the folder",
    errno.EROFS: "the folder is on a read-only filesystem: push to a writable copy",
    errno.ENOSPC: "free space on its disk and push again",
}


class FileBackend:
    """A repository in a local folder; the same folder ``cas serve`` serves."""

    def __init__(self, root: Path, *, creating: bool = False):
        """``creating``: for a writer (a push, ``trust init``), a folder not there yet is an empty repository."""
        self.root = root.absolute()
        self.url = f"file://{self.root}"
        self.creating = creating

    def _path(self, key: str) -> Path:
        return self.root / key

    async def get(self, key: str, limit: int = MAX_DOC_BYTES) -> bytes:
        return await asyncio.to_thread(self._read, key, 0, None, limit)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        return await asyncio.to_thread(self._read, key, start, end)

    def _read(self, key: str, start: int, end: int | None, limit: int = MAX_DOC_BYTES) -> bytes:
        try:
            # O_NONBLOCK: a FIFO planted in the repository must not hang the open
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            self._check_exists()
            raise NotFound(f"{key} is not in the repository {self.url}") from None
        except OSError as e:
            raise RepoError(f"cannot read {self.url}/{key}: {e.strerror}") from None
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RepoError(f"{self.url}/{key} is not a regular file (a device, pipe or socket, perhaps through a "
                                "symlink); remove it from the repository")  # fmt: skip
            if end is None and st.st_size > limit:
                raise RepoError(f"{self.url}/{key} is {st.st_size} bytes, more than the {limit} this object "
                                "may have; the repository is damaged")  # fmt: skip
            f.seek(start)
            data = f.read(limit + 1) if end is None else f.read(end - start)
        if end is None and len(data) > limit:  # it grew after the check
            raise RepoError(f"{self.url}/{key} is more than the {limit} bytes this object may have")
        if end is not None and len(data) != end - start:
            raise RepoError(f"{self.url}/{key} is shorter than the range {start}-{end}")
        return data

    async def create(self, key: str, data: bytes | bytearray) -> bool:
        return await asyncio.to_thread(self._writing, key, write_new, self._path(key), data, self.root / ".tmp")

    async def update(self, key: str, change: Change) -> None:
        await asyncio.to_thread(self._writing, key, self._update, key, change)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._writing, key, self._path(key).unlink, True)

    def _update(self, key: str, change: Change) -> None:
        with locked_folder(self.root):
            try:
                current: bytes | None = self._path(key).read_bytes()
            except FileNotFoundError:
                current = None
            new = change(current)
            if new is not None:
                atomic_write(self._path(key), new, self.root / ".tmp")

    def _writing(self, key: str, write: Callable[..., T], *args: object) -> T:
        """Run a write of this folder, saying what failed and what to do in one line."""
        try:
            return write(*args)
        except OSError as e:
            raise RepoError(
                f"cannot write {self.url}/{key}: {e.strerror}; {_WRITE_ADVICE.get(e.errno or 0, 'push again')}"
            ) from None

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _check_exists(self) -> None:
        """A folder that is not there is no repository: reading it is a mistyped URL, not an empty repository
        (a push makes the folder; ``cas list --remote NAME`` reads NAME as the URL)."""
        if not self.creating and not os.path.isdir(self.root):
            raise RepoError(f"there is no repository at {self.url} (no such folder): check the URL, or push to "
                            "it to start one")  # fmt: skip

    def _list(self, prefix: str) -> builtins.list[str]:
        base = self._path(prefix)
        try:
            if not base.is_dir():
                self._check_exists()
                return []
            os.listdir(base)  # os.walk below would skip a folder it cannot read, silently
        except OSError as e:
            raise RepoError(f"cannot list {self.url}/{prefix}: {e.strerror}") from None
        out = []
        for dirpath, _, names in os.walk(base):
            for n in names:
                if not n.startswith("."):
                    out.append(Path(dirpath, n).relative_to(self.root).as_posix())
        return sorted(out)

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def locked_folder(root: Path) -> Iterator[None]:
    """Hold the folder's update lock: listings are read, changed and written by one writer at a time."""
    path = root / UPDATE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)  # not only closed: a child forked meanwhile shares the lock
        os.close(fd)
