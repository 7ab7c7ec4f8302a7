"""Push: upload a stored model to a repository, only what it lacks.

The repository's pack indexes say which chunks it holds (kept on this host
by pack id, so a second push reads only the new ones).  The other chunks
are read from their blobs, re-hashed, encoded on every core, and packed
into packs of about ``PACK_TARGET`` bytes, each uploaded (pack, then index)
while the next is encoded; then the tree and its locator, and the ref last,
so a reader never sees a ref whose data is missing.  What it reuses is first
taken out of any prune's marks (``Repository.reserve``), so a prune never
deletes it under the push.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import codec, privateloop
from .digest import chunk_id
from .errors import CorruptObject, NotFound, RepoError
from .fsutil import make_dirs, temp_name
from .local.cache import LocalCache, Progress
from .ref import ModelInfo
from .repo.format import IndexEntry, Location, encode_index, locator_key, pack_key, tree_key
from .repo.repository import Repository, indexed_chunks, remote_url, run_with_repository, with_repository
from .repo.stores import public_url
from .tags import Tag
from .tree import Tree
from .trust import publish as trust
from .trust.keys import Signer

PACK_TARGET = 32 << 20
ENCODE_BATCH = 256
CHOICE_SPAN = 4 << 20  # bytes of a file whose chunks share one codec choice
UPLOADS_IN_FLIGHT = 2  # packs uploading while the next one is encoded: memory is a few PACK_TARGETs


class PushStats(NamedTuple):
    """What a push moved."""

    info: ModelInfo
    bytes_uploaded: int  # encoded pack bytes sent to the repository
    bytes_present: int  # raw bytes of chunks the repository held already
    seconds: float
    signed_as: tuple[str, ...] = ()  # the roles that signed it (``sign=``)


class Chunk(NamedTuple):
    """A chunk to upload, and where its bytes are on this host."""

    chunk_id: bytes
    length: int
    blob: Path
    offset: int


def push(cache: LocalCache, tag: str, remote: str | None = None, *, progress: Progress | None = None,
         sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
    """Upload a stored model to ``remote`` (else ``$CAS_REMOTE``), only what it lacks; from any thread.
    ``sign``: keys that sign it (and make it its name's ``latest``) once it is there (see ``cas.trust``)."""
    info = cache.get(tag)
    return run_with_repository(lambda repo: _push(cache, info, repo, progress, sign), remote_url(remote))


async def apush(cache: LocalCache, tag: str, remote: str | None = None, *, progress: Progress | None = None,
                sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
    """``push`` for async code: it runs on a loop of its own thread, so the caller's loop keeps serving."""
    info, url = cache.get(tag), remote_url(remote)
    work = lambda repo: _push(cache, info, repo, progress, sign)  # noqa: E731
    return await privateloop.run_async(lambda: with_repository(work, url))


async def _push(cache: LocalCache, info: ModelInfo, repo: Repository, progress: Progress | None,
                sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
    start = time.perf_counter()
    await repo.check_version_free(info)
    tree = cache.tree(info)
    known = await _known_chunks(cache, repo)
    locations, todo, present = _plan(cache, tree, known)
    unsafe = await _reserve(repo, info.root, locations)
    if unsafe:  # a prune is deleting packs we meant to reuse: upload their chunks again
        known = {cid: loc for cid, loc in known.items() if pack_key(loc.pack_id) not in unsafe}
        locations, todo, present = _plan(cache, tree, known)
    writer = PackWriter(repo)
    try:
        await _encode(todo, writer, progress)
        await writer.close()
    finally:
        await writer.abort()
    locations.update(writer.locations)
    missing = [cid for f in tree.files for cid, _ in f.chunk_list() if cid not in locations]
    if missing:
        raise AssertionError(f"chunk {missing[0].hex()} was not packed")
    await repo.put_tree(info.root, tree.encode(), locations)
    await repo.put_ref(info)
    roles = await trust.sign(repo, [(Tag(info.name, info.version), info.root)], list(sign)) if sign else []
    with contextlib.suppress(OSError):  # a cache this user cannot write still pushes; gc then keeps the model
        cache.refs.add_remote(info, public_url(repo.url))  # it can come back from there now: gc may evict it
    return PushStats(info, writer.uploaded, present, time.perf_counter() - start, tuple(roles))


async def _reserve(repo: Repository, root: str, reused: dict[bytes, Location]) -> set[str]:
    """Take what this push reuses out of any prune's marks (see ``cas.prune``); returns the packs it must not
    reuse after all (a prune is deleting them, or did since they were listed).  A tree of this root there
    already keeps its locator, and the locator its packs: those are reserved too, and one of them being
    deleted stops the push."""
    kept = {tree_key(root), locator_key(root)}
    with contextlib.suppress(NotFound):
        kept |= {pack_key(loc.pack_id) for loc in (await repo.locator(root)).values()}
    unsafe = await repo.reserve(kept | {pack_key(loc.pack_id) for loc in reused.values()})
    if unsafe & kept:
        raise RepoError(f"a prune of {repo.url} is deleting {sorted(unsafe & kept)[0]}, which this push needs; "
                        "push again once it is done (cas prune --remote URL finishes an interrupted one)")  # fmt: skip
    return unsafe


def _plan(
    cache: LocalCache, tree: Tree, known: dict[bytes, Location]
) -> tuple[dict[bytes, Location], list[Chunk], int]:
    """Where the repository holds chunks already, the chunks to upload (each once), and the raw bytes present."""
    locations: dict[bytes, Location] = {}
    todo: dict[bytes, Chunk] = {}
    present = 0
    for f in tree.files:
        blob, offset = cache.objects.blob_of(f), 0
        for cid, length in f.chunk_list():
            if cid in known:
                locations[cid] = known[cid]
                present += length
            elif cid not in todo:
                todo[cid] = Chunk(cid, length, blob, offset)
            offset += length
    return locations, list(todo.values()), present


async def _known_chunks(cache: LocalCache, repo: Repository) -> dict[bytes, Location]:
    """Every chunk the repository holds, from its pack indexes (kept on this host by pack id)."""
    kept = cache.root / "remotes" / hashlib.sha256(repo.url.encode()).hexdigest()[:16] / "packs"
    known: dict[bytes, Location] = {}
    try:
        _, indexed = await repo.packs()
    except RepoError:
        raise RepoError(f"cannot push to {repo.url}: it does not accept uploads (it cannot even list its packs, as a "
                        "static web server cannot): push to a cas serve, file:// or s3:// repository and serve its "
                        "folder") from None  # fmt: skip
    for pack_id in sorted(indexed):
        copy = kept / f"{pack_id}.idx"
        if copy.exists():
            index = copy.read_bytes()
        else:
            index = await repo.pack_index(pack_id)
            _keep_index(kept, copy, index)
        for cid, loc in indexed_chunks(pack_id, index):
            known.setdefault(cid, loc)
    return known


def _keep_index(kept: Path, copy: Path, index: bytes) -> None:
    """Keep a pack index for the next push; best effort: a cache this user cannot write still pushes."""
    try:
        make_dirs(kept)
        tmp = kept / temp_name(".idx-")
        tmp.write_bytes(index)
        os.chmod(tmp, 0o444)  # read by the other users of a shared cache
        os.replace(tmp, copy)
    except OSError:
        pass


async def _encode(todo: list[Chunk], writer: PackWriter, progress: Progress | None) -> None:
    """Encode chunks on every core, a batch at a time, handing each to the pack writer in order."""
    choices: dict[tuple[Path, int], codec.Choice] = {}
    readers = _Readers()
    encode = functools.partial(_encode_one, choices=choices, readers=readers)
    with contextlib.closing(readers), ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i in range(0, len(todo), ENCODE_BATCH):
            batch = todo[i : i + ENCODE_BATCH]
            # map from a thread outside the pool, so every pool thread encodes
            encoded = await asyncio.to_thread(lambda b=batch: list(pool.map(encode, b)))
            for chunk, enc in zip(batch, encoded):
                await writer.add(chunk.chunk_id, chunk.length, enc)
                if progress:
                    progress(chunk.length)


def _encode_one(chunk: Chunk, choices: dict[tuple[Path, int], codec.Choice], readers: _Readers) -> bytes:
    """Read, check and encode one chunk.  Its codec is chosen once per ``CHOICE_SPAN`` of its file (a tensor's
    chunks are alike, and choosing was half of encoding them), never by a file's first chunk (a header)."""
    data = os.pread(readers.fd(chunk.blob), chunk.length, chunk.offset)
    if chunk_id(data) != chunk.chunk_id:
        raise CorruptObject(f"blob {chunk.blob.name} does not hold chunk {chunk.chunk_id.hex()[:16]} any more; "
                            "run 'cas verify'")  # fmt: skip
    if chunk.offset == 0 or len(data) <= 4 * codec.SAMPLE:
        return codec.encode(data)
    key = (chunk.blob, chunk.offset // CHOICE_SPAN)
    known = choices.get(key)  # kept as for a chunk at the file's start: byte planes follow the file's words
    if known is None:
        choice = codec.choose(data)
        choices[key] = choice.rotated(-chunk.offset)
    else:
        choice = known.rotated(chunk.offset)
    return codec.encode(data, choice=choice)


class _Readers:
    """Each encoding thread's open blob, kept until that thread reads another (chunks come in file order:
    opening one per chunk cost 0.5 CPU-seconds per GB); ``close`` once the threads are done."""

    def __init__(self) -> None:
        self._mine = threading.local()
        self._open: set[int] = set()

    def fd(self, blob: Path) -> int:
        if getattr(self._mine, "blob", None) != blob:
            fd = os.open(blob, os.O_RDONLY)
            self._open.add(fd)
            old = getattr(self._mine, "fd", None)
            self._mine.blob, self._mine.fd = blob, fd
            if old is not None:
                self._open.discard(old)
                os.close(old)
        return self._mine.fd

    def close(self) -> None:
        for fd in self._open:
            os.close(fd)
        self._open.clear()


class PackWriter:
    """Collects encoded chunks into packs and uploads each full one in the background, at most
    ``UPLOADS_IN_FLIGHT`` at a time; ``locations`` says where every uploaded chunk is."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.locations: dict[bytes, Location] = {}
        self.uploaded = 0  # pack bytes sent
        self._pieces: list[bytes] = []  # the encoded chunks of the pack being filled, joined once when sealed
        self._size = 0
        self._entries: list[IndexEntry] = []
        self._uploads: list[asyncio.Task[None]] = []

    async def add(self, cid: bytes, raw_length: int, encoded: bytes) -> None:
        """Add one encoded chunk (``raw_length`` bytes decoded) to the pack being filled."""
        self._entries.append(IndexEntry(cid, self._size, len(encoded), raw_length, encoded[0]))
        self._pieces.append(encoded)
        self._size += len(encoded)
        if self._size >= PACK_TARGET:
            await self._seal()

    async def close(self) -> None:
        """Upload the last pack and wait for every upload; the first failure is raised."""
        await self._seal()
        await asyncio.gather(*self._uploads)

    async def abort(self) -> None:
        """Cancel uploads still running (after a failure; after ``close`` there are none)."""
        for t in self._uploads:
            t.cancel()
        await asyncio.gather(*self._uploads, return_exceptions=True)

    async def _seal(self) -> None:
        if not self._entries:
            return
        while True:  # room for one more upload; a finished upload's failure stops the push here
            for t in [t for t in self._uploads if t.done()]:
                self._uploads.remove(t)
                t.result()
            if len(self._uploads) < UPLOADS_IN_FLIGHT:
                break
            await asyncio.wait(self._uploads, return_when=asyncio.FIRST_COMPLETED)
        pieces, entries = self._pieces, self._entries
        self._pieces, self._size, self._entries = [], 0, []
        self._uploads.append(asyncio.ensure_future(self._upload(pieces, entries)))

    async def _upload(self, pieces: list[bytes], entries: list[IndexEntry]) -> None:
        data, pack_id = await asyncio.to_thread(_sealed, pieces)
        await self.repo.put_pack(pack_id, data, encode_index(len(data), entries))
        for e in entries:
            self.locations[e.chunk_id] = Location(pack_id, e.offset, e.length)
        self.uploaded += len(data)


def _sealed(pieces: list[bytes]) -> tuple[bytes, str]:
    """A pack's bytes and its id (the BLAKE3 of them), off the event loop; the pieces are let go at once, not
    held while the pack uploads."""
    data = b"".join(pieces)
    pieces.clear()
    return data, chunk_id(data).hex()
