"""Reading one file into the cache: copy, file hash and chunk list in one pass.

A small file (under ``PIPELINE_MIN_BYTES``) is read whole with one read,
written with one write, and chunked and hashed in memory: a few syscalls a
file.  A large one is copied by the kernel (``copy_file_range``, no bytes
through this process) on one thread while this thread reads the copy back
from the page cache as it grows, chunks it and hashes the chunks, and a
third hashes the whole file from the same blocks: the file id and the chunk
list describe exactly the bytes of the copy that will be published.  With
``durable``, writeback of the copy starts as it is written
(``sync_file_range``), so the caller's final fsync finds little left to do.
Memory is a bounded number of blocks, whatever the file's size.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
from collections.abc import Callable

from blake3 import blake3

from ..content.chunking import chunk_bytes, chunk_stream
from ..content.digest import chunk_id
from ..content.tree import CHUNK_RECORD
from ..errors import InvalidInput
from ..system.durable import start_writeback
from ..system.files import pwrite_all, write_all

PIPELINE_MIN_BYTES = 8 << 20
_QUEUE_BLOCKS = 16  # bounds memory: 16 reads of at most 512 KiB in flight
_SEGMENT = 16 << 20  # the kernel copies this much between two reports of progress
# copy_file_range refused: another filesystem on an old kernel, or a filesystem without it
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class Digested:
    """What one pass over a file learnt: its id, size and packed chunk list."""

    __slots__ = ("file_id", "size", "chunks")

    def __init__(self, file_id: bytes, size: int, chunks: bytes):
        self.file_id, self.size, self.chunks = file_id, size, chunks


def digest_file(
    src_path: str | os.PathLike[str],
    copy_to: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
    durable: bool = False,
) -> Digested:
    """Hash and chunk ``src_path``; with ``copy_to`` (a new file), also copy it there.

    ``durable``: start writeback of a large file while it is read, for a caller that flushes it later
    (``ObjectStore.store_blobs``).  ``src_path`` must be a regular file, not a symlink (``sources.scan`` resolves
    links): a blob is always a regular file whose bytes match its name."""
    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise InvalidInput(f"{src_path} is not a regular file (it changed while it was stored); try again")
        dst = -1 if copy_to is None else os.open(copy_to, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            before = os.fstat(src)
            if before.st_size < PIPELINE_MIN_BYTES:
                d = _digest_small(src, dst, before.st_size)
                if progress:
                    progress(d.size)
            else:
                d = _digest_large(src, dst, progress, durable)
            _unchanged(src_path, before, os.fstat(src), d.size)
            return d
        finally:
            if dst >= 0:
                os.close(dst)
    finally:
        os.close(src)


def _unchanged(path: str | os.PathLike[str], before: os.stat_result, after: os.stat_result, read: int) -> None:
    """A file written while it was read would be stored as a mix of old and new bytes: refuse it (a write
    moves the modification time; the link count a concurrent hardlink changes is no reason to)."""
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or read != after.st_size:
        raise InvalidInput(f"{path} changed while it was read; store it again once nothing writes to it")


def _digest_small(src: int, dst: int, size: int) -> Digested:
    """Read whole, written with one write, chunked and hashed in memory."""
    data = os.read(src, size + 1)
    if data:  # a read may return less than asked (some filesystems do): the end is an empty read
        parts = [data]
        while block := os.read(src, max(size + 1 - len(data), 1 << 16)):
            parts.append(block)
        if len(parts) > 1:
            data = b"".join(parts)
    if dst >= 0:
        write_all(dst, data)
    records = b"".join([CHUNK_RECORD.pack(chunk_id(c), len(c)) for c in chunk_bytes(data)])
    return Digested(blake3(data).digest(), len(data), records)


class _Copier:
    """Copies ``src`` to ``dst`` on a thread (in the kernel where it can); ``upto`` waits for progress."""

    def __init__(self, src: int, dst: int, durable: bool):
        self.src, self.dst, self.durable = src, dst, durable
        self.copied = 0
        self.done = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cas-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            kernel = True
            while True:
                if kernel:
                    try:
                        n = os.copy_file_range(self.src, self.dst, _SEGMENT, self.copied, self.copied)
                    except OSError as e:
                        if self.copied or e.errno not in _NO_KERNEL_COPY:
                            raise
                        kernel = False
                        continue
                else:
                    n = _copy_block(self.src, self.dst, self.copied)
                if not n:
                    break
                if self.durable:
                    start_writeback(self.dst, self.copied, n)
                with self._cond:
                    self.copied += n
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - re-raised on the reading thread
            self.error = e
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def upto(self, offset: int) -> int:
        """Wait until more than ``offset`` bytes are copied, or the copy is over; how many are."""
        with self._cond:
            while self.copied <= offset and not self.done:
                self._cond.wait()
        if self.error is not None:
            raise self.error
        return self.copied

    def stop(self) -> None:
        """After a failure on the reading side: let the copy end (it is bounded by the file)."""
        self._thread.join()


def _copy_block(src: int, dst: int, offset: int) -> int:
    data = os.pread(src, 1 << 20, offset)
    pwrite_all(dst, data, offset)
    return len(data)


class _Reader:
    """What the chunker reads: the copy as the kernel fills it (or the source when nothing is copied).

    Each block read is also handed to a second thread that hashes the whole file (blake3 releases the
    GIL, as does the chunker), so the two cores overlap chunking with hashing while the kernel copies."""

    def __init__(self, fd: int, copier: _Copier | None, progress: Callable[[int], None] | None, writeback: bool):
        self.fd, self.copier, self.progress = fd, copier, progress
        self.size = 0
        self._writeback = writeback  # start writing the file to disk behind the reading (a file moved in)
        self._flushed = 0
        self.hasher = blake3()
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUE_BLOCKS)
        self._thread = threading.Thread(target=self._drain, name="cas-hash", daemon=True)
        self._thread.start()

    def readinto(self, buf: memoryview) -> int:
        want = len(buf)
        if self.copier is not None:
            want = min(want, self.copier.upto(self.size) - self.size)
            if want <= 0:
                return 0
        n = os.preadv(self.fd, [buf[:want]], self.size)
        if n:
            if self._error is not None:
                raise self._error
            self._queue.put(bytes(buf[:n]))  # the chunker reuses its buffer: hand over a copy
            self.size += n
            if self._writeback and self.size - self._flushed >= _SEGMENT:
                start_writeback(self.fd, self._flushed, self.size - self._flushed)
                self._flushed = self.size
            if self.progress:
                self.progress(n)
        return n

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.hasher.update(data)
                except BaseException as e:  # noqa: BLE001 - re-raised on the reading thread
                    self._error = e

    def finish(self) -> bytes:
        """Wait for the hash to catch up; the file id."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.hasher.digest()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()


def _digest_large(src: int, dst: int, progress: Callable[[int], None] | None, durable: bool) -> Digested:
    copier = _Copier(src, dst, durable) if dst >= 0 else None
    reader = _Reader(dst if dst >= 0 else src, copier, progress, durable and copier is None)
    try:
        records = [CHUNK_RECORD.pack(chunk_id(c), len(c)) for c in chunk_stream(reader)]
        file_id = reader.finish()
    except BaseException:
        reader.abort()
        if copier is not None:
            copier.stop()
        raise
    if copier is not None:
        copier.stop()
        if copier.error is not None:
            raise copier.error
    return Digested(file_id, reader.size, b"".join(records))
