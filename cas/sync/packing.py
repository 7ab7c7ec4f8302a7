"""Packs: chunks read from their blobs, checked, encoded, joined and uploaded.

A push cuts the chunks it uploads into packs of about ``PACK_TARGET`` raw
bytes (``groups``); each pack is built by one ``Builder``, in the pushing
process or in a push worker process (``cas.sync.pushworker``), on one thread:
a pack's chunks never wait for another thread's GIL.  A builder uploads a
pack while it encodes the next.  A prune's repack adds chunks that are
encoded already (``PackWriter``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ..content import codec
from ..content.digest import chunk_id
from ..errors import CorruptObject
from ..repo.format import IndexEntry, Location, encode_index
from ..repo.repository import Repository

PACK_TARGET = 32 << 20
CHOICE_SPAN = 4 << 20  # bytes of a file whose chunks share one codec choice


class Chunk(NamedTuple):
    """A chunk to upload, and where its bytes are on this host."""

    chunk_id: bytes
    length: int
    blob: Path
    offset: int


class Built(NamedTuple):
    """A pack ready to upload: its id (the BLAKE3 of its bytes), its bytes, and what it holds."""

    pack_id: str
    data: bytes | bytearray
    entries: list[IndexEntry]

    def packed(self) -> Packed:
        return Packed(self.pack_id, len(self.data), self.entries)


class Packed(NamedTuple):
    """A pack uploaded: its id, its size, and what it holds."""

    pack_id: str
    size: int
    entries: list[IndexEntry]

    def locations(self) -> dict[bytes, Location]:
        return {e.chunk_id: Location(self.pack_id, e.offset, e.length) for e in self.entries}

    def raw_size(self) -> int:
        return sum(e.raw_length for e in self.entries)


def groups(chunks: Iterable[Chunk], target: int = PACK_TARGET) -> list[list[Chunk]]:
    """Chunks, in the order given (file order: neighbours share a codec choice), cut into packs of about
    ``target`` raw bytes."""
    out: list[list[Chunk]] = []
    size = target
    for c in chunks:
        if size >= target:
            out.append([])
            size = 0
        out[-1].append(c)
        size += c.length
    return out


def sealed(pieces: Iterable[bytes], entries: list[IndexEntry]) -> Built:
    """Encoded chunks joined into a pack."""
    data = b"".join(pieces)
    return Built(chunk_id(data).hex(), data, entries)


class Encoder:
    """Reads, checks and encodes chunks for one builder.  It keeps its open blob (chunks come in file order:
    opening one per chunk cost 0.5 CPU-seconds per GB) and the codec chosen for each ``CHOICE_SPAN``."""

    def __init__(self) -> None:
        self._blob: Path | None = None
        self._fd = -1
        self._choices: dict[tuple[Path, int], codec.Choice] = {}

    def build(self, chunks: list[Chunk]) -> Built:
        """One pack of ``chunks``, each read from its blob and checked against its id first.  Codecs are chosen
        afresh for each pack, so a pack's bytes do not depend on which builder built the packs before it.

        The pack is written into one buffer sized for the most it can take: grown piece by piece instead, its
        reallocations left glibc's heap holding freed packs (a 1 GB push peaked at 214 MB; this way 120 MB)."""
        self._choices.clear()
        data = bytearray(sum(c.length for c in chunks) + len(chunks))  # the most it can take: raw + a codec byte
        entries, end = [], 0
        with memoryview(data) as out:
            for c in chunks:
                start = end
                parts = self.encode(c)
                for part in parts:
                    out[end : end + len(part)] = part
                    end += len(part)
                entries.append(IndexEntry(c.chunk_id, start, end - start, c.length, parts[0][0]))
        del data[end:]
        return Built(chunk_id(data).hex(), data, entries)

    def encode(self, chunk: Chunk) -> list[bytes | memoryview]:
        """Read, check and encode one chunk (``codec.encode_parts``).  Its codec is chosen once per
        ``CHOICE_SPAN`` of its file (a tensor's chunks are alike, and choosing was half of encoding them), never by
        a file's first chunk (a header)."""
        data = os.pread(self._open(chunk.blob), chunk.length, chunk.offset)
        if chunk_id(data) != chunk.chunk_id:
            raise CorruptObject(f"blob {chunk.blob.name} does not hold chunk {chunk.chunk_id.hex()[:16]} any more; "
                                "run 'cas verify'")  # fmt: skip
        if chunk.offset == 0 or len(data) <= 4 * codec.SAMPLE:
            return codec.encode_parts(data)
        key = (chunk.blob, chunk.offset // CHOICE_SPAN)
        known = self._choices.get(key)  # kept as for a chunk at the file's start: byte planes follow the file's words
        if known is None:
            choice = codec.choose(data)
            self._choices[key] = choice.rotated(-chunk.offset)
        else:
            choice = known.rotated(chunk.offset)
        return codec.encode_parts(data, choice=choice)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._blob, self._fd = None, -1

    def _open(self, blob: Path) -> int:
        if blob != self._blob:
            self.close()
            self._fd = os.open(blob, os.O_RDONLY)
            self._blob = blob
        return self._fd


class Builder:
    """Builds packs one at a time on a thread, uploading each while it builds the next (memory: two packs)."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._encoder = Encoder()
        self._upload = OneUpload()

    async def add(self, chunks: list[Chunk], done: Callable[[Packed], None]) -> None:
        """Build a pack of ``chunks`` and start its upload; ``done`` is called once it is uploaded."""
        built = await asyncio.to_thread(self._encoder.build, chunks)
        await self._upload.start(self._put(built, done))

    async def close(self) -> None:
        """Wait for the last upload (its failure is raised) and let the open blob go."""
        try:
            await self._upload.wait()
        finally:
            self._encoder.close()

    async def abort(self) -> None:
        """Cancel an upload still running (after a failure; after ``close`` there is none)."""
        await self._upload.abort()
        self._encoder.close()

    async def _put(self, built: Built, done: Callable[[Packed], None]) -> None:
        await self.repo.put_pack(built.pack_id, built.data, encode_index(len(built.data), built.entries))
        done(built.packed())


class PackWriter:
    """Collects encoded chunks into packs and uploads each full one in the background, one at a time while the
    next fills; ``locations`` says where every uploaded chunk is."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.locations: dict[bytes, Location] = {}
        self.uploaded = 0  # pack bytes sent
        self._pieces: list[bytes] = []  # the encoded chunks of the pack being filled, joined once when sealed
        self._size = 0
        self._entries: list[IndexEntry] = []
        self._upload = OneUpload()

    async def add(self, cid: bytes, raw_length: int, encoded: bytes) -> None:
        """Add one encoded chunk (``raw_length`` bytes decoded) to the pack being filled."""
        self._entries.append(IndexEntry(cid, self._size, len(encoded), raw_length, encoded[0]))
        self._pieces.append(encoded)
        self._size += len(encoded)
        if self._size >= PACK_TARGET:
            await self._seal()

    async def close(self) -> None:
        """Upload the last pack and wait for it; a failure is raised."""
        await self._seal()
        await self._upload.wait()

    async def abort(self) -> None:
        """Cancel an upload still running (after a failure; after ``close`` there is none)."""
        await self._upload.abort()

    async def _seal(self) -> None:
        if not self._entries:
            return
        pieces, entries = self._pieces, self._entries
        self._pieces, self._size, self._entries = [], 0, []
        await self._upload.start(self._put(pieces, entries))

    async def _put(self, pieces: list[bytes], entries: list[IndexEntry]) -> None:
        built = await asyncio.to_thread(sealed, pieces, entries)
        pieces.clear()  # let go now, not while the pack uploads
        await self.repo.put_pack(built.pack_id, built.data, encode_index(len(built.data), built.entries))
        self.locations.update(built.packed().locations())
        self.uploaded += len(built.data)


class OneUpload:
    """At most one pack uploading, while the next is built: memory is two packs."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self, upload: Coroutine[Any, Any, None]) -> None:
        """Wait for the upload before (its failure is raised here), then start this one."""
        try:
            await self.wait()
        except BaseException:
            upload.close()
            raise
        self._task = asyncio.ensure_future(upload)

    async def wait(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
