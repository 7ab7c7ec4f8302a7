"""Part files: the files a pull assembles, chunk by chunk, before they become blobs.

A part file of at least ``LOG_MIN_BYTES`` is made before the fetch at its
file's size; each verified chunk is written at its offset and then its
offset is appended to ``<part>.done``, so an interrupted pull resumes with
what it verified.  A smaller file keeps no log, is made at its first write
and is fetched again whole: on a filesystem that scans for a free inode
(ext4 without a journal), a log per file cost a third of the CPU of pulling
10,000 small files, and an early create with a second open a tenth.  Processes share these files
safely: every chunk has its own offsets, and ``O_APPEND`` lines are atomic.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator

from ..system.dirs import open_shared
from ..system.files import copy_range, pwrite_all, write_all
from .pullplan import Target

FLUSH_EVERY = 0.5  # seconds between write-behind flushes of large part files
FLUSH_MIN_BYTES = 64 << 20
LOG_MIN_BYTES = 1 << 20  # smaller part files keep no log of verified chunks: they are fetched again whole


class Parts:
    """Part files being written and their logs of verified chunks (``<part>.done``: one offset a line).

    A chunk's offset is logged only after its bytes are written, so an
    interrupted pull can resume with what it verified; the final whole-file
    hash catches anything a crash lost in between.  At most ``MAX_OPEN``
    part files stay open (least recently used are closed, never one a
    thread is writing): a model of 10,000 files must not need 20,000 fds.
    """

    MAX_OPEN = 64

    def __init__(self) -> None:
        self._open: OrderedDict[str, list[int]] = OrderedDict()  # part: [data fd, log fd, writers]
        self._lock = threading.Lock()  # decoding threads write concurrently

    @contextlib.contextmanager
    def _use(self, part: str) -> Iterator[list[int]]:
        with self._lock:
            entry = self._open.get(part)
            if entry is None:
                data, new = _open_part(part)
                log = -1
                try:
                    if not new and os.fstat(data).st_size >= LOG_MIN_BYTES:
                        log = open_shared(part + ".done", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
                except BaseException:
                    os.close(data)
                    raise
                entry = self._open[part] = [data, log, 0]
                self._close_idle(keep=self.MAX_OPEN)
            else:
                self._open.move_to_end(part)
            entry[2] += 1
        try:
            yield entry
        finally:
            with self._lock:
                entry[2] -= 1

    def _close_idle(self, keep: int) -> None:
        for part in [p for p, e in self._open.items() if e[2] == 0][: max(0, len(self._open) - keep)]:
            data, log, _ = self._open.pop(part)
            os.close(data)
            if log >= 0:
                os.close(log)

    def write(self, targets: list[Target], data: bytes | memoryview) -> None:
        for t in targets:
            with self._use(t.part) as entry:
                pwrite_all(entry[0], data, t.offset)

    def copy(self, src: int, src_offset: int, length: int, part: str, offset: int) -> None:
        """Copy ``length`` bytes of the file open as ``src`` into ``part`` by the kernel (``copy_range``)."""
        with self._use(part) as entry:
            copy_range(src, entry[0], length, src_offset, offset)

    def mark(self, targets: list[Target]) -> None:
        by_part: dict[str, list[str]] = defaultdict(list)
        for t in targets:
            by_part[t.part].append(f"{t.offset}\n")
        for part, lines in by_part.items():
            with self._use(part) as entry:
                if entry[1] >= 0:
                    write_all(entry[1], "".join(lines).encode())

    def close(self) -> None:
        with self._lock:
            self._close_idle(keep=0)


def _open_part(part: str) -> tuple[int, bool]:
    """A part file opened for writing, and whether this call created it (a small one is made at its
    first write: ``new_part`` made the large ones, which keep a log, and the empty ones)."""
    try:
        return open_shared(part, os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW), True
    except FileExistsError:
        return os.open(part, os.O_WRONLY | os.O_NOFOLLOW), False


def read_done(part: str) -> set[int]:
    """The offsets of a part file whose chunks an earlier pull verified and wrote."""
    try:
        fd = os.open(part + ".done", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none, or not one this cache wrote (a symlink: ELOOP)
        return set()
    with open(fd) as f:
        return {int(x) for x in f.read().split() if x.isdigit()}


def _needs_creating(size: int) -> bool:
    """Whether a part file of ``size`` bytes is made before the fetch: a large one, to keep a log of its
    verified chunks, and an empty one, which no write would make.  Others are made at their first write:
    pulling 10,000 small files, a create and an open each cost a tenth of the pull."""
    return size >= LOG_MIN_BYTES or size == 0


def new_part(part: str, size: int, *, exists: bool = True) -> None:
    """Make way for a part file of ``size`` bytes, never through a link someone left at its name: what
    is there is removed, and the file is created (exclusively) now if ``_needs_creating``, else at its
    first write.

    ``exists=False``: the caller saw nothing at that name (the exclusive create still refuses anything
    that appeared since); nothing to remove first, two syscalls a file fewer.
    """
    if exists:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
    if exists or size >= LOG_MIN_BYTES:
        with contextlib.suppress(FileNotFoundError):  # a log without its part file describes nothing
            os.unlink(part + ".done")
    if not _needs_creating(size):
        return
    fd = open_shared(part, os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class FlushBehind(threading.Thread):
    """Calls fdatasync on the large part files every ``FLUSH_EVERY`` seconds until stopped.

    Measured on a 1 GB pull: the fsync before publishing went from 1.6-1.9 s
    to 0.2-0.3 s, the whole pull from 5.1-6.1 s to 4.6-4.8 s.
    """

    def __init__(self, parts: list[str]):
        """``parts``: the part files to flush, largest first (at most ``Parts.MAX_OPEN`` are)."""
        super().__init__(name="cas-flush-behind", daemon=True)
        self._fds = [os.open(p, os.O_RDONLY) for p in parts[: Parts.MAX_OPEN]]
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopping.wait(FLUSH_EVERY):
            for fd in self._fds:
                os.fdatasync(fd)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        for fd in self._fds:
            os.close(fd)
