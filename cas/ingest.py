"""Reading one file into the cache: copy, file hash and chunk list in one pass.

The file is read once, in the chunker's blocks (twice its largest chunk);
each block is written to the
temporary blob (when copying), fed to the whole-file hasher and to the
content-defined chunker, whose chunks are hashed as they appear.  Memory is
one block plus the chunker's window, whatever the file's size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import BinaryIO

from .chunking import chunk_stream
from .digest import chunk_id, file_hasher
from .tree import CHUNK_RECORD


class _Tee:
    """A reader for the chunker that copies and hashes everything it reads."""

    def __init__(self, src: BinaryIO, dst: BinaryIO | None, progress: Callable[[int], None] | None):
        self.src, self.dst, self.progress = src, dst, progress
        self.hasher = file_hasher()
        self.size = 0

    def readinto(self, buf: memoryview) -> int:
        n = self.src.readinto(buf)
        if n:
            view = buf[:n]
            if self.dst is not None:
                self.dst.write(view)
            self.hasher.update(view)
            self.size += n
            if self.progress:
                self.progress(n)
        return n or 0


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
) -> Digested:
    """Hash and chunk ``src_path``; with ``copy_to``, also copy it there (fsynced)."""
    with open(src_path, "rb", buffering=0) as src, _maybe_open(copy_to) as dst:
        tee = _Tee(src, dst, progress)
        records = [CHUNK_RECORD.pack(chunk_id(c), len(c)) for c in chunk_stream(tee)]
        if dst is not None:
            os.fsync(dst.fileno())
    return Digested(tee.hasher.digest(), tee.size, b"".join(records))
