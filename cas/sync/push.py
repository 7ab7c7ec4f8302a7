"""Push: upload a stored model to a repository, only what it lacks.

The repository's pack indexes say which chunks it holds (kept on this host
by pack id, so a second push reads only the new ones).  The other chunks
are cut into packs of about ``packing.PACK_TARGET`` raw bytes, each read
from its blobs, re-hashed, encoded and uploaded (pack, then index) by this
process or a push worker process beside it (``cas.sync.pushworker``: one per
further core for large pushes), each taking the next pack as it finishes
one; then the tree and its locator, and the ref last,
so a reader never sees a ref whose data is missing.  What it reuses is first
taken out of any prune's marks (``Repository.reserve``), so a prune never
deletes it under the push.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..content.ref import ModelInfo
from ..content.tags import Tag
from ..content.tree import Tree
from ..errors import CasError, NotFound, RepoError
from ..local.cache import LocalCache, Progress
from ..repo.format import Location, locator_key, pack_key, tree_key
from ..repo.repository import Repository, indexed_chunks, remote_url, run_with_repository, with_repository
from ..repo.stores import public_url
from ..system import eventloop
from ..system.dirs import make_dirs
from ..system.names import temp_name
from ..trust import publish as trust
from ..trust.keys import Signer
from . import packing
from .fetchpool import all_or_nothing
from .packing import Builder, Chunk, Packed
from .pushworker import feed
from .workers import Workers, count_from_env, spare_cores

# Below this, worker processes are not started: a worker's interpreter and imports cost ~0.2 CPU-seconds, and
# this process alone encodes 256 MB in about a second.  CAS_PUSH_PROCESSES=N chooses for any size.
WORKERS_MIN_BYTES = 256 << 20
MAX_WORKERS = 8


class PushStats(NamedTuple):
    """What a push moved."""

    info: ModelInfo
    bytes_uploaded: int  # encoded pack bytes sent to the repository
    bytes_present: int  # raw bytes of chunks the repository held already
    seconds: float
    signed_as: tuple[str, ...] = ()  # the roles that signed it (``sign=``)


def push(cache: LocalCache, tag: str, remote: str | None = None, *, progress: Progress | None = None,
         sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
    """Upload a stored model to ``remote`` (else ``$CAS_REMOTE``), only what it lacks; from any thread.
    ``sign``: keys that sign it (and make it its name's ``latest``) once it is there (see ``cas.trust``)."""
    info = cache.whole(tag, "a push")
    return run_with_repository(lambda repo: _push(cache, info, repo, progress, sign), remote_url(remote), creating=True)


async def apush(cache: LocalCache, tag: str, remote: str | None = None, *, progress: Progress | None = None,
                sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
    """``push`` for async code: it runs on a loop of its own thread, so the caller's loop keeps serving."""
    info, url = cache.whole(tag, "a push"), remote_url(remote)
    work = lambda repo: _push(cache, info, repo, progress, sign)  # noqa: E731
    return await eventloop.run_async(lambda: with_repository(work, url, creating=True))


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
    uploaded = await _upload(repo, todo, locations, progress)
    missing = [cid for f in tree.files for cid, _ in f.chunk_list() if cid not in locations]
    if missing:
        raise AssertionError(f"chunk {missing[0].hex()} was not packed")
    await repo.put_tree(info.root, tree.encode(), locations)
    new = await repo.put_ref(info)
    roles = await trust.sign(repo, [(Tag(info.name, info.version), info.root)], list(sign)) if sign else []
    with contextlib.suppress(OSError):  # a cache this user cannot write still pushes; gc then keeps the model
        cache.refs.add_remote(info, public_url(repo.url))  # it can come back from there now: gc may evict it
    if new and not sign:
        await _warn_if_signing(repo, info)
    return PushStats(info, uploaded, present, time.perf_counter() - start, tuple(roles))


async def _warn_if_signing(repo: Repository, info: ModelInfo) -> None:
    """A new version pushed unsigned where publishers sign: hosts with a policy will refuse it, so say so now.
    Only a warning: the push is done, and a repository that cannot answer this is no reason to fail it."""
    with contextlib.suppress(CasError):
        if await trust.is_set_up(repo):
            import warnings

            warnings.warn(f"cas: {public_url(repo.url)} is set up for signing and {info.tag} was pushed unsigned: "
                          f"hosts with a trust policy refuse it until it is signed ('cas sign {info.tag} --remote URL "
                          "--sign KEY', or push with --sign)", stacklevel=2)  # fmt: skip


async def _reserve(repo: Repository, root: str, reused: dict[bytes, Location]) -> set[str]:
    """Take what this push reuses out of any prune's marks (see ``cas.sync.prune``); returns the packs it must not
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


def worker_count(size: int) -> int:
    """How many push worker processes to add to this one for uploading ``size`` bytes (``CAS_PUSH_PROCESSES``
    is obeyed whatever the size)."""
    configured = count_from_env("CAS_PUSH_PROCESSES", MAX_WORKERS)
    if configured is not None:
        return configured
    return min(spare_cores(), MAX_WORKERS) if size >= WORKERS_MIN_BYTES else 0


async def _upload(repo: Repository, todo: list[Chunk], locations: dict[bytes, Location],
                  progress: Progress | None) -> int:  # fmt: skip
    """Build and upload the packs of ``todo``, here and in worker processes, each taking the next pack as it
    finishes one; adds where each chunk went to ``locations`` and returns the pack bytes uploaded."""
    packs = deque(packing.groups(todo))
    uploaded = 0

    def done(p: Packed) -> None:
        nonlocal uploaded
        locations.update(p.locations())
        uploaded += p.size
        if progress:
            progress(p.raw_size())

    count = min(worker_count(sum(c.length for c in todo)), len(packs) - 1)
    workers = await Workers.start("cas.sync.pushworker", count) if count > 0 else None
    try:
        procs = workers.procs if workers else []
        await all_or_nothing([_build_here(repo, packs, done)] + [feed(p, repo.url, packs, done) for p in procs])
    finally:
        if workers:
            await workers.close()
    return uploaded


async def _build_here(repo: Repository, packs: deque[list[Chunk]], done: Callable[[Packed], None]) -> None:
    """This process's builder: take packs until none are left."""
    builder = Builder(repo)
    try:
        while packs:
            await builder.add(packs.popleft(), done)
        await builder.close()
    finally:
        await builder.abort()
