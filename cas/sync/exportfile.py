"""The export file format: one model (ref, tree and chunks) as a single stream, written and read record by
record, every byte hashed for the end check (``cas.sync.archive`` exports and imports models with it).

Format, version 2 (integers big-endian)::

    magic       8 bytes   b"\\x89CASX\\r\\n\\x1a" (PNG-style: mangled line endings or a text file are refused)
    version     1 byte    2 (1: the same without the signatures record; still read)
    ref         uint32 length, then the ref record (``ref``, no remotes)
    tree        uint32 length, then the encoded tree (``tree``); it hashes to the ref's root
    signatures  uint32 length, then the signed trust documents the exporting host verified the model with
                (``cas.trust.bundle``; length 0: none); a host with a trust policy verifies them before
                anything is written, as it would a repository's
    chunks      for each distinct blob (file id, executable) in tree order, each of its chunks in file order:
                uint32 length, then the chunk encoded by ``codec`` as in repository packs
    end         4 bytes b"CEND", then BLAKE3 of every byte before it (32 bytes); nothing may follow

Chunk ids and raw lengths are not repeated: the tree lists them, so a reader knows before each chunk what it
must decode to, bounds its length (an encoded chunk is at most its raw length plus the codec byte) and checks
its id.  Both sides stream chunk by chunk, encoding or decoding on every core in a bounded window: memory does
not grow with the model.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

from blake3 import blake3

from ..content.tree import FileEntry, Tree
from ..errors import CorruptObject, InvalidInput
from ..system.names import temp_name

MAGIC = b"\x89CASX\r\n\x1a"
VERSION = 2
READS = (1, 2)  # the format versions import reads
END = b"CEND"
LENGTH = struct.Struct(">I")
MAX_SIGNATURES_BYTES = 64 << 20  # the signatures record (cas.trust.bundle bounds each document within it)
WINDOW = 64  # chunks encoded or decoded ahead of the writer: at most ~2 x 64 x 256 KiB in memory
BUFFER = 1 << 20  # bytes buffered when reading or writing an export file

Source = str | os.PathLike[str] | IO[bytes]  # a path ("-": stdin) or a binary file object
T = TypeVar("T")
R = TypeVar("R")


def blobs_in_order(tree: Tree) -> list[FileEntry]:
    """The files whose chunks an export carries: each distinct blob once, in tree order."""
    seen: set[tuple[bytes, bool]] = set()
    out = []
    for f in tree.files:
        if (f.file_id, f.executable) not in seen:
            seen.add((f.file_id, f.executable))
            out.append(f)
    return out


def ordered(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int = WINDOW) -> Iterator[R]:
    """``fn`` over ``items`` on the pool, results in order, at most ``window`` in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


class Sink:
    """The export stream: counts and hashes every byte written."""

    def __init__(self, out: IO[bytes]):
        self.out, self.hash, self.count = out, blake3(), 0

    def write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.count += len(data)

    def record(self, data: bytes) -> None:
        self.write(LENGTH.pack(len(data)) + data)

    def end(self) -> None:
        digest = self.hash.digest()
        self.out.write(END + digest)
        self.count += len(END) + len(digest)
        self.out.flush()


@contextlib.contextmanager
def destination(dest: Source, durable: bool) -> Iterator[IO[bytes]]:
    """The stream to write: stdout, the caller's file object, or a file published by rename only when complete
    (fsynced first unless the cache is not durable: ``CAS_DURABLE=0`` means no fsync anywhere)."""
    if dest == "-":
        yield sys.stdout.buffer
        return
    if not isinstance(dest, (str, os.PathLike)):
        yield dest
        return
    path = Path(dest)
    tmp = path.with_name(f".{path.name}.{temp_name()}")
    try:
        try:
            f = open(tmp, "xb", buffering=BUFFER)
        except OSError as e:  # name the file the user gave, not the temporary
            raise OSError(e.errno, e.strerror, str(path)) from None
        with f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Reader:
    """The import stream: exact reads that refuse a short one, every byte hashed for the end check."""

    def __init__(self, f: IO[bytes], name: str):
        self.f, self.name, self.hash, self.count, self.version = f, name, blake3(), 0, VERSION

    def damaged(self, what: str) -> CorruptObject:
        return CorruptObject(f"{self.name} is not a whole cas export file: {what}; nothing was stored: export the "
                             "model again (and check the copy)")  # fmt: skip

    def header(self) -> None:
        """The magic and the format version: anything else is refused before a length is believed."""
        head = self.f.read(len(MAGIC) + 1)
        if not head:
            raise InvalidInput(f"{self.name} is empty: give a file written by 'cas export'")
        if head[: len(MAGIC)] != MAGIC:
            raise InvalidInput(f"{self.name} is not a cas export file (it does not start with the export header); "
                               "give a file written by 'cas export'")  # fmt: skip
        if len(head) <= len(MAGIC) or head[len(MAGIC)] not in READS:
            version = head[len(MAGIC)] if len(head) > len(MAGIC) else "none"
            raise InvalidInput(f"{self.name} is a cas export file of format {version}; this cas reads formats "
                               f"{READS[0]} to {READS[-1]}: import it with the cas that exported it")  # fmt: skip
        self.version = head[len(MAGIC)]
        self.hash.update(head)
        self.count += len(head)

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        while len(data) < n:  # a raw file object may return short reads before the end
            more = self.f.read(n - len(data))
            if not more:
                raise self.damaged(f"it ends in the middle of {what} (truncated)")
            data += more
        self.hash.update(data)
        self.count += n
        return data

    def record(self, limit: int, what: str) -> bytes:
        (n,) = LENGTH.unpack(self.read(LENGTH.size, f"the length of {what}"))
        if n > limit:
            raise self.damaged(f"{what} claims {n} bytes, more than the {limit} allowed")
        return self.read(n, what)

    def end(self) -> None:
        expected = self.hash.digest()
        marker = self.f.read(len(END) + len(expected))
        if len(marker) < len(END) + len(expected):
            raise self.damaged("it ends before its end marker (truncated)")
        if marker[: len(END)] != END:
            raise self.damaged("its end marker is missing where the last chunk ends")
        if marker[len(END) :] != expected:
            raise self.damaged("its end check does not match its bytes (altered)")
        if self.f.read(1):
            raise self.damaged("bytes follow its end marker")
        self.count += len(marker)


@contextlib.contextmanager
def source(src: Source) -> Iterator[tuple[IO[bytes], str]]:
    if src == "-":
        yield sys.stdin.buffer, "stdin"
    elif isinstance(src, (str, os.PathLike)):
        with open(src, "rb", buffering=BUFFER) as f:
            yield f, os.fspath(src)
    else:
        yield src, getattr(src, "name", "the export stream")
