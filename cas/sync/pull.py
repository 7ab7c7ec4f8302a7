"""Pull: fetch a model from a repository into the cache, moving only what no local file holds.

By stage, for the files whose blobs are missing:

1. plan: each becomes a part file in ``tmp/pull/<root>`` (``Assembly``); what an
   interrupted pull verified there is kept;
2. copy local: chunks any local blob holds (the chunk index) are copied by
   the kernel, runs of neighbours at once, never through this process; the
   whole-file hash of step 4 proves them, and a file it refuses is
   assembled again from the repository alone;
3. fetch: the rest, as merged ranges of packs (``pullplan``), here and in
   worker processes (``fetchpool``), every chunk decoded and verified;
4. verify and publish: each file is hashed whole as it fills
   (``prefixhash``) and becomes a blob only if it hashes to its id, all
   checked before any is published; then the tree and the ref.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from ..content import tags
from ..content.ref import ModelInfo
from ..content.selection import Selection
from ..content.tree import FileEntry, Tree
from ..errors import OUT_OF_SPACE, CasError, OutOfSpace, Untrusted, out_of_space_advice
from ..local import interrupted
from ..local.cache import LocalCache, Progress
from ..local.space import format_size
from ..repo import CONCURRENCY
from ..repo.repository import Repository, remote_url, run_with_repository, with_repository
from ..repo.stores import public_url
from ..system import eventloop
from ..system.dirs import make_dirs
from ..trust.client import Verdict, verify
from ..trust.policy import TrustPolicy
from . import seeds as seeds_module
from .assembly import Assembly, LocalCopyRefused, ranges_for
from .fetchpool import fetch, worker_count
from .prefixhash import PrefixHasher
from .pullplan import Range, Target
from .workers import Workers


class PullStats(NamedTuple):
    """What a pull moved."""

    info: ModelInfo
    bytes_fetched: int  # encoded bytes read from the repository
    bytes_reused: int  # raw bytes copied from files already on this host (the cache's and seeds')
    seconds: float
    bytes_seeded: int = 0  # of those, raw bytes taken from seed folders
    was_here: bool = False  # the version was stored here already, with every file the pull asked for
    evicted: tuple[str, ...] = ()  # versions gc evicted after the pull to keep the cache to its size budget

    def with_evicted(self, tags: tuple[str, ...]) -> PullStats:
        return self._replace(evicted=tags)


def pull(cache: LocalCache, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
         progress: Progress | None = None, trust: TrustPolicy | None = None,
         selection: Selection | None = None, seeds: Sequence[str] | None = None) -> PullStats:  # fmt: skip
    """Fetch ``tag`` from ``remote`` (else ``$CAS_REMOTE``) into the cache and record it; from any thread.
    ``selection``: only the files it takes (the version is then recorded as partial unless all are here)."""
    url = remote_url(remote)
    return eventloop.run(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress,
                                             trust=trust, selection=selection, seeds=seeds))  # fmt: skip


async def apull(cache: LocalCache, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
                progress: Progress | None = None, trust: TrustPolicy | None = None,
                selection: Selection | None = None, seeds: Sequence[str] | None = None) -> PullStats:  # fmt: skip
    """``pull`` for async code: it runs on a loop of its own thread, so the caller's loop keeps serving;
    cancelling the awaiting task stops it once unwound, keeping what it verified for the next pull."""
    url = remote_url(remote)
    return await eventloop.run_async(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress,
                                                         trust=trust, selection=selection, seeds=seeds))  # fmt: skip


class PullEstimate(NamedTuple):
    """What a pull would move, worked out from the ref, tree and locator alone (``cas pull --dry-run``)."""

    info: ModelInfo
    bytes_to_fetch: int  # encoded bytes of the ranges it would request
    requests: int  # range requests
    bytes_reused: int  # raw bytes it would copy from files already on this host (the chunk index)
    bytes_present: int  # raw bytes of the model's files stored here whole already


def estimate(cache: LocalCache, tag: str, remote: str | None = None, selection: Selection | None = None
             ) -> PullEstimate:  # fmt: skip
    """What pulling ``tag`` (the files ``selection`` takes) would fetch and reuse; reads three small
    documents, writes nothing."""
    return run_with_repository(lambda repo: _estimate(cache, repo, tag, selection), remote_url(remote))


async def _estimate(cache: LocalCache, repo: Repository, tag: str, selection: Selection | None) -> PullEstimate:
    info = await repo.ref(tag)
    tree, _ = await repo.tree(info)
    files = selection.files(tree, info.tag) if selection is not None else tree.files
    missing = [f for f in files if not cache.objects.has_blob(f.file_id, f.executable)]
    wanted: dict[bytes, list[Target]] = defaultdict(list)
    raw_len: dict[bytes, int] = {}
    for f in missing:
        offset = 0
        for cid, length in f.chunk_list():
            wanted[cid].append(Target(f.file_id.hex(), offset))
            raw_len[cid] = length
            offset += length
    local = await asyncio.to_thread(cache.chunk_index().find, list(wanted)) if wanted else {}
    reused = sum(raw_len.pop(cid) for cid in local if wanted.pop(cid, None) is not None)
    where = f"{info.tag}: the locator in {repo.url}"
    ranges = ranges_for(wanted, raw_len, await repo.locator(info.root), where) if wanted else []
    present = sum(f.size for f in files) - sum(f.size for f in missing)
    return PullEstimate(info, sum(r.end - r.start for r in ranges), len(ranges), reused, present)


async def pull_here(cache: LocalCache, tag: str, url: str, *, concurrency: int = CONCURRENCY,
                    progress: Progress | None = None, trust: TrustPolicy | None = None,
                    selection: Selection | None = None, seeds: Sequence[str] | None = None) -> PullStats:  # fmt: skip
    """``pull`` on the running loop (for code already on a private loop); ``trust``: the policy that must
    vouch for what is pulled, as the caller resolved it (``Cache.trust_policy``), None for none; ``seeds``:
    folders whose files may hold chunks (default ``$CAS_SEEDS``)."""
    dirs = seeds_module.check_dirs(seeds if seeds is not None else seeds_module.from_env())
    work = lambda repo: _Pull(cache, repo, concurrency, progress, trust, dirs).run(tag, selection)  # noqa: E731
    return await with_repository(work, url, concurrency)


class _Pull:
    """One pull into one cache from one repository."""

    def __init__(self, cache: LocalCache, repo: Repository, concurrency: int, progress: Progress | None,
                 policy: TrustPolicy | None = None, seeds: Sequence[str] = ()):  # fmt: skip
        self.cache, self.repo, self.concurrency, self.progress = cache, repo, concurrency, progress
        self.policy, self.seeds, self.seeded = policy, seeds, 0

    async def run(self, tag: str, selection: Selection | None = None) -> PullStats:
        start = time.perf_counter()
        verdict, info, tree, encoded = await self._verdict_and_tree(tags.parse(tag))
        files = selection.files(tree, info.tag) if selection is not None else tree.files
        fetched = reused = 0
        # One pull per root at a time on this host: racers wait (cancellably), then find the blobs there.
        async with self.cache.locks.ahold("objects", shared=True), self.cache.locks.ahold(f"pull-{info.root}"):
            try:
                missing = [f for f in files if not self.cache.objects.has_blob(f.file_id, f.executable)]
                was_here = not missing and self.cache.refs.exists(info)
                if missing:
                    fetched, reused = await self._build_blobs(info, missing)
                partial = selection is not None and not all(self.cache.objects.has_blob(f.file_id, f.executable)
                                                            for f in tree.files)  # fmt: skip
                info = info.as_partial(partial)
                stored = self.cache.commit(info, tree, encoded, remote=public_url(self.repo.url))
                if verdict:
                    self._record(verdict, stored)
            except OSError as e:
                if isinstance(e, CasError) or e.errno not in OUT_OF_SPACE:
                    raise
                raise await asyncio.to_thread(self._out_of_space, info, e) from None
        return PullStats(info, fetched, reused, time.perf_counter() - start, self.seeded, was_here)

    async def _verdict_and_tree(self, tag: tags.Tag) -> tuple[Verdict | None, ModelInfo, Tree, bytes]:
        """The ref and tree to pull and, under a policy, what the signatures say they must be.  A named version's
        ref and tree are read while its signatures are checked, and used only if these name the same root (a
        ``latest`` is the version the signatures name, so it waits for them)."""
        if self.policy is None:
            return None, *(await self._ref_and_tree(tag))
        if tag.is_latest:
            verdict = await self._verdict(self.policy, tag)
            return self._signed(verdict, *(await self._ref_and_tree(verdict.tag)))
        read = asyncio.ensure_future(self._ref_and_tree(tag))
        try:
            verdict = await self._verdict(self.policy, tag)  # its refusal first: it says more than the tree's
        except BaseException:
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)
            raise
        return self._signed(verdict, *(await read))

    async def _ref_and_tree(self, tag: tags.Tag) -> tuple[ModelInfo, Tree, bytes]:
        info = await self.repo.ref(tag)
        return info, *(await self.repo.tree(info))

    def _signed(self, verdict: Verdict, info: ModelInfo, tree: Tree, encoded: bytes
                ) -> tuple[Verdict, ModelInfo, Tree, bytes]:  # fmt: skip
        if info.root != verdict.verified.root:
            raise Untrusted(f"{info.tag} in {self.repo.url} names tree {info.root[:16]}, but its signature names "
                            f"{verdict.verified.root[:16]}: refused, nothing was pulled")  # fmt: skip
        return verdict, info, tree, encoded

    async def _verdict(self, policy: TrustPolicy, tag: tags.Tag) -> Verdict:
        """What the repository's signatures say ``tag`` is, checked against the policy (one host at a time)."""
        async with self.cache.locks.ahold("trust"):
            return await verify(self.repo, policy, self.cache.trusted, tag)

    def _record(self, verdict: Verdict, stored: ModelInfo) -> None:
        if stored.root != verdict.verified.root:
            raise Untrusted(f"{stored.tag} is already in {self.cache.root} with other content than the signed one; "
                            f"remove it ('cas rm {stored.tag}') and pull again")  # fmt: skip
        self.cache.trusted.record(verdict.anchor, verdict.tag, verdict.verified)

    def _out_of_space(self, info: ModelInfo, e: OSError) -> OutOfSpace:
        """Free this pull's part files and those of pulls no process runs, so a full disk never wedges the
        cache; the error says what was freed and what to do."""
        freed = interrupted.free(self.cache.objects, self.cache.locks, self.cache.objects.pull_work / info.root)
        where = f" ({e.filename})" if e.filename else ""
        return OutOfSpace(f"could not pull {info.tag} into {self.cache.root}: {e.strerror}{where}; its "
                          f"partial files were removed ({format_size(freed)} freed): "
                          f"{out_of_space_advice(e, self.cache.root)}")  # fmt: skip

    async def _build_blobs(self, info: ModelInfo, files: list[FileEntry]) -> tuple[int, int]:
        """The blobs of ``files``, assembled and published: returns the bytes fetched and reused.  A file that
        local copies made wrong is assembled again from the repository alone (the pull still succeeds)."""
        try:
            return await self._assemble(info, files, local=True)
        except LocalCopyRefused:
            return await self._assemble(info, files, local=False)

    async def _assemble(self, info: ModelInfo, files: list[FileEntry], *, local: bool) -> tuple[int, int]:
        count = worker_count(sum(f.size for f in files))
        # their imports overlap the planning below
        workers = await Workers.start("cas.sync.fetchworker", count) if count else None
        try:
            locations = await self.repo.locator(info.root)
            work = self.cache.objects.pull_work / info.root  # a pull of another model sharing a file builds its own
            make_dirs(work)
            assembly = Assembly(work, files)
            reused = await asyncio.to_thread(assembly.copy_local, self.cache, self.progress) if local else 0
            if self.seeds and assembly.wanted:
                self.seeded = await asyncio.to_thread(assembly.copy_seeds, self.seeds, files, self.progress)
                reused += self.seeded
            ranges = assembly.ranges(locations, f"{info.tag}: the locator in {self.repo.url}")
            worth = workers if worker_count(sum(r.end - r.start for r in ranges)) else None  # local files held most
            fetched = await self._fetch(info.tag, assembly, ranges, worth)
            assembly.publish(self.cache)
        finally:
            if workers:
                await workers.close()
        with contextlib.suppress(OSError):  # kept while other pulls are resumable
            work.rmdir()
            work.parent.rmdir()
        return fetched, reused

    async def _fetch(self, tag: str, assembly: Assembly, ranges: list[Range], workers: Workers | None) -> int:
        """Fetch the ranges, hashing each part file as its written prefix grows; every file is checked
        against its id before any is published.  Returns the bytes fetched."""
        hasher = PrefixHasher(assembly.layout, assembly.targets(), known=assembly.single)

        def on_done(r: Range) -> None:
            hasher.written(t for p in r.pieces for t in p.targets)
            if self.progress:
                self.progress(sum(p.raw_length for p in r.pieces))

        try:
            flush = assembly.large_parts() if self.cache.durable else None
            fetched = await fetch(tag, self.repo, ranges, self.concurrency, on_done, workers, flush_behind=flush)
        except BaseException:
            await asyncio.to_thread(hasher.stop)
            raise
        assembly.check(await asyncio.to_thread(hasher.digests), tag, self.repo.url)
        return fetched
