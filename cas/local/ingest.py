"""Reading one file into the cache: copy, file hash and chunk list in one pass.

The file is read once, in the chunker's blocks (at most twice its largest
chunk); each block goes to the content-defined chunker, whose chunks are
hashed as they appear, and to the copy and the whole-file hasher.  Memory
is a bounded number of blocks, whatever the file's size.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from ..chunking import chunk_stream
from ..digest import chunk_id, file_hasher
from ..tree import CHUNK_RECORD

PIPELINE_MIN_BYTES = 8 << 20
_QUEUE_BLOCKS = 16  # bounds memory: 16 reads of at most 512 KiB in flight


class _Tee:
    """A reader for the chunker that also copies and hashes everything it reads.

    For large files the copy and the whole-file hash run on a second thread
    (file writes and blake3 release the GIL, as does the chunker), so the two
    cores overlap reading and chunking with writing and hashing.
    """

    def __init__(self, src: BinaryIO, dst: BinaryIO | None, progress: Callable[[int], None] | None, size: int):
        self.src, self.dst, self.progress = src, dst, progress
        pipelined = size >= PIPELINE_MIN_BYTES
        self.hasher = file_hasher(threads=not pipelined)  # pipelined: the chunker has the other core
        self.size = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._error: BaseException | None = None
        if pipelined:
            self._queue = queue.Queue(_QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._drain, name="cas-ingest", daemon=True)
            self._thread.start()

    def readinto(self, buf: memoryview) -> int:
        n = self.src.readinto(buf) or 0
        if n:
            if self._queue is not None:
                if self._error is not None:
                    raise self._error
                self._queue.put(bytes(buf[:n]))  # the chunker reuses its buffer: hand over a copy
            else:
                self._consume(buf[:n])
            self.size += n
            if self.progress:
                self.progress(n)
        return n

    def _consume(self, data: bytes | memoryview) -> None:
        if self.dst is not None:
            self.dst.write(data)
        self.hasher.update(data)

    def _drain(self) -> None:
        assert self._queue is not None
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(data)
                except BaseException as e:  # noqa: BLE001 - re-raised on the reading thread
                    self._error = e

    def finish(self) -> bytes:
        """Wait for the copy and hash to catch up; the file id."""
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            if self._error is not None:
                raise self._error
        return self.hasher.digest()

    def abort(self) -> None:
        if self._queue is not None and self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()


class Digested:
    """What one pass over a file learnt: its id, size and packed chunk list."""

    __slots__ = ("file_id", "size", "chunks")

    def __init__(self, file_id: bytes, size: int, chunks: bytes):
        self.file_id, self.size, self.chunks = file_id, size, chunks


def _maybe_open(path: str | os.PathLike | None) -> contextlib.AbstractContextManager[BinaryIO | None]:
    return open(path, "xb", buffering=0) if path is not None else contextlib.nullcontext()


def digest_file(
    src_path: str | os.PathLike,
    copy_to: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    fsync: bool = True,
) -> Digested:
    """Hash and chunk ``src_path``; with ``copy_to``, also copy it there (fsynced unless told not to)."""
    with open(src_path, "rb", buffering=0) as src, _maybe_open(copy_to) as dst:
        tee = _Tee(src, dst, progress, os.fstat(src.fileno()).st_size)
        try:
            records = [CHUNK_RECORD.pack(chunk_id(c), len(c)) for c in chunk_stream(tee)]
            file_id = tee.finish()
        except BaseException:
            tee.abort()
            raise
        if dst is not None and fsync:
            os.fsync(dst.fileno())
    return Digested(file_id, tee.size, b"".join(records))
