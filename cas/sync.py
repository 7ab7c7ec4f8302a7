"""Push (cache -> repository) and pull (repository -> cache).

Push encodes only the chunks the repository lacks (it learns which from the
pack indexes, cached locally so a second push reads only new ones), writes
packs of ``PACK_TARGET`` bytes, then the tree and its locator, and the ref
last: a reader never sees a ref whose data is missing.

Pull reads the ref, the tree and the locator, then builds every missing
blob in a temporary file: chunks already on this host are copied from local
blobs (found through the chunk index), the rest are fetched as merged byte
ranges of packs, many requests in flight, decoded and verified in threads
and, for large pulls, worker processes (``cas.fetch``), and written at their
offsets.  Each file is hashed whole as it fills (``cas.prefixhash``) and
becomes a blob only if it hashes to its id, so no corrupt byte is ever
published.  Progress
survives an interruption: the temporary files and a log of verified chunks
are kept per file id, so running the pull again fetches only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from . import codec, privateloop, tags
from . import ref as refs
from .digest import chunk_id
from .errors import CasError, CorruptObject, NotFound, RepoError
from .fetch import Parts, Range, Target, Workers, fetch, new_part, plan, read_done, worker_count
from .fsutil import make_dirs, temp_name
from .prefixhash import PrefixHasher
from .ref import ModelInfo
from .repo.backend import Backend, open_backend
from .repo.format import (
    IndexEntry,
    Location,
    decode_index,
    decode_locator,
    encode_index,
    encode_locator,
    index_key,
    locator_key,
    pack_key,
    ref_key,
    tree_key,
)
from .tree import FileEntry
from .tree import decode as decode_tree

if TYPE_CHECKING:
    from .cache import Cache

PACK_TARGET = 32 << 20
CONCURRENCY = 16
ENCODE_BATCH = 256
UPLOADS_IN_FLIGHT = 2  # packs uploading while the next one is encoded: memory is a few PACK_TARGETs

Progress = Callable[[int], None]
T = TypeVar("T")


class SyncStats(NamedTuple):
    """What a push or pull moved."""

    info: ModelInfo
    bytes_fetched: int  # pull: encoded bytes read from the repository; push: bytes uploaded
    bytes_reused: int  # pull: raw bytes copied from local files; push: raw bytes the repository had
    bytes_total: int
    seconds: float


def remote_url(remote: str | None) -> str:
    url = remote or os.environ.get("CAS_REMOTE")
    if not url:
        raise CasError("no repository given: pass remote=URL (--remote URL) or set CAS_REMOTE")
    return url


def token() -> str | None:
    return os.environ.get("CAS_TOKEN") or None


def run_with_backend(work: Callable[[Backend], Awaitable[T]], url: str, concurrency: int = CONCURRENCY) -> T:
    """Run ``work(backend)`` to completion on a private loop: works from any thread, loop or not."""
    return privateloop.run(lambda: with_backend(work, url, concurrency))


async def with_backend(work: Callable[[Backend], Awaitable[T]], url: str, concurrency: int = CONCURRENCY) -> T:
    """Run ``work(backend)`` on the running loop with a backend for ``url``, closed afterwards."""
    backend = open_backend(url, token=token(), concurrency=concurrency)
    try:
        return await work(backend)
    finally:
        await backend.close()


# -- repository reads ---------------------------------------------------------


async def remote_ref(backend: Backend, tag: str) -> ModelInfo:
    """A tag's ref in the repository; ``latest`` is its newest version there."""
    t = tags.parse(tag)
    if not t.is_latest:
        try:
            return refs.decode(await backend.get(ref_key(t.name, t.version)), name=t.name, version=t.version)
        except NotFound:
            raise NotFound(f"model {t} is not in the repository {backend.url}") from None
    versions = await remote_versions(backend, t.name)
    if not versions:
        raise NotFound(f"model {t.name} has no version in the repository {backend.url}")
    return max(versions, key=lambda i: (i.created, i.version))


async def remote_versions(backend: Backend, name: str | None = None) -> list[ModelInfo]:
    keys = await backend.list(f"refs/{name}/" if name else "refs/")
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) != 3 or parts[2].startswith("."):
            continue
        try:
            out.append(refs.decode(await backend.get(key), name=parts[1], version=parts[2]))
        except NotFound:
            continue
    return sorted(out, key=lambda i: (i.created, i.tag), reverse=True)


def list_remote(remote: str | None, name: str | None = None) -> list[ModelInfo]:
    """The models in a repository, newest first."""
    if name is not None:
        tags.validate_name(name)
    return run_with_backend(lambda backend: remote_versions(backend, name), remote_url(remote))


# -- push -----------------------------------------------------------------------


def push(cache: Cache, tag: str, remote: str | None = None, *, progress: Progress | None = None) -> SyncStats:
    """Upload a stored model (only what the repository lacks); the ref goes last."""
    info = cache.get(tag)
    url = remote_url(remote)
    return run_with_backend(lambda backend: _push(cache, info, backend, progress), url)


async def apush(cache: Cache, tag: str, remote: str | None = None, *, progress: Progress | None = None) -> SyncStats:
    """``push`` for async code: runs on a loop of its own thread, so the caller's loop keeps serving."""
    info = cache.get(tag)
    url = remote_url(remote)
    return await privateloop.run_async(lambda: with_backend(lambda backend: _push(cache, info, backend, progress), url))


async def _push(cache: Cache, info: ModelInfo, backend: Backend, progress: Progress | None) -> SyncStats:
    start = time.perf_counter()
    try:
        existing = refs.decode(
            await backend.get(ref_key(info.name, info.version)), name=info.name, version=info.version
        )
    except NotFound:
        existing = None
    if existing is not None and existing.root != info.root:
        raise CasError(
            f"{info.tag} already exists in {backend.url} with other content (root {existing.root[:12]}); "
            "push under a new version"
        )
    tree = cache.tree(info)
    known = await _known_chunks(cache, backend)
    locations: dict[bytes, Location] = {}
    todo: list[tuple[bytes, int, Path, int]] = []  # chunk id, raw length, blob, offset
    reused = 0
    for f in tree.files:
        blob = cache._blob_path(f.file_id, f.executable)
        offset = 0
        for cid, length in f.chunk_list():
            if cid in known:
                locations[cid] = known[cid]
                reused += length
            elif cid not in locations:
                locations[cid] = Location("", 0, 0)  # placeholder until packed
                todo.append((cid, length, blob, offset))
            offset += length
    uploaded = await _upload_packs(backend, todo, locations, progress)
    for f in tree.files:  # chunks that repeat within the model
        for cid, _ in f.chunk_list():
            if not locations[cid].pack_id:
                raise AssertionError(f"chunk {cid.hex()} was not packed")
    tree_bytes = tree.encode()
    await backend.put(tree_key(info.root), tree_bytes)
    await backend.put(locator_key(info.root), encode_locator(locations))
    await backend.put(ref_key(info.name, info.version), info.encode(), replace=True)
    return SyncStats(info, uploaded, reused, info.size, time.perf_counter() - start)


async def _known_chunks(cache: Cache, backend: Backend) -> dict[bytes, Location]:
    """Every chunk the repository holds, from its pack indexes (cached on this host by pack id)."""
    local = cache.root / "remotes" / hashlib.sha256(backend.url.encode()).hexdigest()[:16] / "packs"
    known: dict[bytes, Location] = {}
    for key in await backend.list("packs/"):
        if not key.endswith(".idx"):
            continue
        pack_id = key[len("packs/") : -len(".idx")]
        cached = local / f"{pack_id}.idx"
        if cached.exists():
            data = cached.read_bytes()
        else:
            data = await backend.get(key)
            _keep_index(local, cached, data)
        _, entries = decode_index(data)
        for e in entries:
            known.setdefault(e.chunk_id, Location(pack_id, e.offset, e.length))
    return known


def _keep_index(local: Path, cached: Path, data: bytes) -> None:
    """Keep a pack index for the next push; best effort: a cache this user cannot write still pushes."""
    try:
        make_dirs(local)
        tmp = local / temp_name(".idx-")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o444)  # read by the other users of a shared cache
        os.replace(tmp, cached)
    except OSError:
        pass


async def _upload_packs(
    backend: Backend,
    todo: list[tuple[bytes, int, Path, int]],
    locations: dict[bytes, Location],
    progress: Progress | None,
) -> int:
    """Encode chunks into packs on all cores while earlier packs upload (``UPLOADS_IN_FLIGHT`` at a time)."""
    uploaded = 0
    pack = bytearray()
    entries: list[IndexEntry] = []
    pending: list[asyncio.Task] = []

    async def upload(data: bytes, packed: list[IndexEntry]) -> None:
        nonlocal uploaded
        pack_id = (await asyncio.to_thread(chunk_id, data)).hex()
        await backend.put(pack_key(pack_id), data)
        await backend.put(index_key(pack_id), encode_index(len(data), packed))
        for e in packed:
            locations[e.chunk_id] = Location(pack_id, e.offset, e.length)
        uploaded += len(data)

    async def flush() -> None:
        nonlocal pack, entries
        if not entries:
            return
        while True:
            for t in [t for t in pending if t.done()]:
                pending.remove(t)
                t.result()  # an upload's failure stops the push here
            if len(pending) < UPLOADS_IN_FLIGHT:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.append(asyncio.ensure_future(upload(bytes(pack), entries)))
        pack, entries = bytearray(), []

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for i in range(0, len(todo), ENCODE_BATCH):
                batch = todo[i : i + ENCODE_BATCH]
                # map from a thread outside the pool, so every pool thread encodes
                encoded = await asyncio.to_thread(lambda b=batch: list(pool.map(_encode_one, b)))
                for (cid, length, _, _), enc in zip(batch, encoded):
                    entries.append(IndexEntry(cid, len(pack), len(enc), length, enc[0]))
                    pack += enc
                    if progress:
                        progress(length)
                    if len(pack) >= PACK_TARGET:
                        await flush()
            await flush()
            await asyncio.gather(*pending)
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return uploaded


def _encode_one(item: tuple[bytes, int, Path, int]) -> bytes:
    cid, length, blob, offset = item
    with open(blob, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    if chunk_id(data) != cid:
        raise CorruptObject(f"blob {blob.name} does not hold chunk {cid.hex()[:16]} any more; run 'cas verify'")
    return codec.encode(data)


# -- pull -------------------------------------------------------------------------


def pull(
    cache: Cache,
    tag: str,
    remote: str | None = None,
    *,
    concurrency: int = CONCURRENCY,
    progress: Progress | None = None,
) -> SyncStats:
    """Fetch a model from a repository into the cache (only what no local file holds) and record it."""
    url = remote_url(remote)
    return privateloop.run(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress))


async def apull(
    cache: Cache,
    tag: str,
    remote: str | None = None,
    *,
    concurrency: int = CONCURRENCY,
    progress: Progress | None = None,
) -> SyncStats:
    """``pull`` for async code: runs on a loop of its own thread, so the caller's loop keeps serving.

    Cancelling the awaiting task stops the pull once it has unwound; what it verified is kept for the next pull."""
    url = remote_url(remote)
    return await privateloop.run_async(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress))


async def pull_here(
    cache: Cache, tag: str, url: str, *, concurrency: int = CONCURRENCY, progress: Progress | None = None
) -> SyncStats:
    """``pull`` as a coroutine on the running loop, for code already on a private loop."""
    return await with_backend(lambda backend: _pull(cache, tag, backend, concurrency, progress), url, concurrency)


async def _pull(cache: Cache, tag: str, backend: Backend, concurrency: int, progress: Progress | None) -> SyncStats:
    start = time.perf_counter()
    info = await remote_ref(backend, tag)
    tree_bytes = await backend.get(tree_key(info.root))
    tree = decode_tree(tree_bytes, bytes.fromhex(info.root))
    if tree.size != info.size or len(tree.files) != info.file_count:
        raise CorruptObject(f"{info.tag} in {backend.url}: its ref and its tree disagree on size or file count")
    fetched = reused = 0
    # One pull per root at a time on this host: racers wait (cancellably), then find the blobs there.
    async with cache._alock("objects", shared=True), cache._alock(f"pull-{info.root}"):
        missing = [f for f in tree.files if not cache._blob_path(f.file_id, f.executable).exists()]
        if missing:
            count = worker_count(sum(f.size for f in missing))
            workers = await Workers.start(count, token()) if count else None
            try:
                locations = decode_locator(await backend.get(locator_key(info.root)))
                fetched, reused = await _assemble(cache, info, missing, locations, backend, concurrency, progress,
                                                  workers)  # fmt: skip
            finally:
                if workers:
                    await workers.close()
        cache._commit(info, tree, tree_bytes)
    return SyncStats(info, fetched, reused, info.size, time.perf_counter() - start)


async def _assemble(
    cache: Cache,
    info: ModelInfo,
    files: list[FileEntry],
    locations: dict[bytes, Location],
    backend: Backend,
    concurrency: int,
    progress: Progress | None,
    workers: Workers | None,
) -> tuple[int, int]:
    work = cache.root / "tmp" / "pull"
    make_dirs(work)
    wanted: dict[bytes, list[Target]] = defaultdict(list)
    raw_len: dict[bytes, int] = {}
    layout: dict[str, list[tuple[int, int]]] = {}  # part file: its chunks (offset, length) in order
    entries: dict[str, FileEntry] = {}  # part file: the tree entry it becomes
    for f in files:
        part = _part_path(work, f)
        if str(part) in entries:
            continue  # the same file twice in one model
        entries[str(part)] = f
        if part.is_symlink() or not part.is_file() or part.stat().st_size != f.size:
            new_part(part, f.size)
            done = set()
        else:
            done = read_done(part)
        offset = 0
        chunks = layout[str(part)] = []
        for cid, length in f.chunk_list():
            if offset not in done:
                wanted[cid].append(Target(str(part), offset))
                raw_len[cid] = length
            chunks.append((offset, length))
            offset += length
    parts = Parts()
    try:
        reused = await asyncio.to_thread(_copy_local, cache, wanted, raw_len, parts, progress)
    finally:
        parts.close()
    for cid in wanted:
        if cid not in locations:
            raise CorruptObject(f"{info.tag}: the locator in {backend.url} does not say where chunk {cid.hex()} is")
    ranges = plan(wanted, raw_len, locations)
    if workers and not worker_count(sum(r.end - r.start for r in ranges)):
        workers = None  # local files held most of it: not worth feeding the workers
    hasher = PrefixHasher(layout, (t for targets in wanted.values() for t in targets))

    def on_done(r: Range) -> None:
        hasher.written(t for p in r.pieces for t in p.targets)
        if progress:
            progress(sum(p.raw_length for p in r.pieces))

    try:
        fetched = await fetch(info.tag, backend, ranges, concurrency, on_done, workers, flush_behind=cache.durable)
    except BaseException:
        await asyncio.to_thread(hasher.stop)
        raise
    digests = await asyncio.to_thread(hasher.digests)
    for part, f in entries.items():  # all checked before any is published: a refused pull stores nothing
        if digests[part] != f.file_id:
            Path(part).unlink()
            Path(part + ".done").unlink(missing_ok=True)
            raise CorruptObject(
                f"{info.tag}: {f.path} assembled from verified chunks does not hash to its file id; the partial "
                f"file was discarded: pull again, and if this repeats the tree in {backend.url} is inconsistent"
            )
    for part, f in entries.items():
        cache._publish_pulled(Path(part), f.file_id, f.executable)
        Path(part + ".done").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # kept while other pulls are resumable
        work.rmdir()
    return fetched, reused


def _part_path(work: Path, f: FileEntry) -> Path:
    return work / f"{f.file_id.hex()}{'.x' if f.executable else ''}.part"


def _copy_local(cache: Cache, wanted: dict, raw_len: dict, parts: Parts, progress: Progress | None) -> int:
    """Copy every wanted chunk that a local blob holds (re-hashed first); returns the bytes reused."""
    seeds = cache._chunk_index().find(list(wanted))
    reused = 0
    for cid, seed in seeds.items():
        blob = cache._blob_path(seed.file_id, seed.executable)
        try:
            with open(blob, "rb") as f:
                data = os.pread(f.fileno(), seed.length, seed.offset)
        except FileNotFoundError:
            cache._chunk_index().forget_file(seed.file_id)
            continue
        if len(data) != raw_len[cid] or chunk_id(data) != cid:
            continue
        targets = wanted.pop(cid)
        parts.write(targets, data)
        parts.mark(targets)
        reused += len(data)
        if progress:
            progress(len(data))
    return reused


__all__ = ["RepoError", "SyncStats", "apull", "apush", "pull", "pull_here", "push", "remote_ref", "remote_versions"]
