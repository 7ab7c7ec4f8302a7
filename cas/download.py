"""Pull: fetch a model from a repository into the cache, moving only what no local file holds.

By stage, for the files whose blobs are missing:

1. plan: each becomes a part file in ``tmp/pull/<root>`` (``Assembly``); what an
   interrupted pull verified there is kept;
2. copy local: chunks any local blob holds (the chunk index) are copied by
   the kernel, runs of neighbours at once, never through this process; the
   whole-file hash of step 4 proves them, and a file it refuses is
   assembled again from the repository alone;
3. fetch: the rest, as merged ranges of packs (``ranges``), here and in
   worker processes (``fetch``), every chunk decoded and verified;
4. verify and publish: each file is hashed whole as it fills
   (``prefixhash``) and becomes a blob only if it hashes to its id, all
   checked before any is published; then the tree and the ref.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from . import privateloop, tags
from . import seeds as seeds_module
from .errors import OUT_OF_SPACE, CasError, CorruptObject, OutOfSpace, Untrusted, out_of_space_advice
from .fetch import fetch, worker_count
from .fsutil import make_dirs
from .local import interrupted
from .local.cache import LocalCache, Progress
from .local.space import format_size
from .parts import FLUSH_MIN_BYTES, LOG_MIN_BYTES, Parts, new_part, read_done
from .prefixhash import PrefixHasher
from .ranges import Range, Target, copy_runs, plan
from .ref import ModelInfo
from .repo import CONCURRENCY
from .repo.format import Location
from .repo.repository import Repository, remote_url, run_with_repository, with_repository
from .repo.stores import public_url
from .selection import Selection
from .tree import FileEntry, Tree
from .trust.client import Verdict, verify
from .trust.policy import TrustPolicy
from .workerprocs import Workers


class PullStats(NamedTuple):
    """What a pull moved."""

    info: ModelInfo
    bytes_fetched: int  # encoded bytes read from the repository
    bytes_reused: int  # raw bytes copied from files already on this host (the cache's and seeds')
    seconds: float
    bytes_seeded: int = 0  # of those, raw bytes taken from seed folders


def pull(cache: LocalCache, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
         progress: Progress | None = None, trust: TrustPolicy | None = None,
         selection: Selection | None = None, seeds: Sequence[str] | None = None) -> PullStats:  # fmt: skip
    """Fetch ``tag`` from ``remote`` (else ``$CAS_REMOTE``) into the cache and record it; from any thread.
    ``selection``: only the files it takes (the version is then recorded as partial unless all are here)."""
    url = remote_url(remote)
    return privateloop.run(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress,
                                             trust=trust, selection=selection, seeds=seeds))  # fmt: skip


async def apull(cache: LocalCache, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
                progress: Progress | None = None, trust: TrustPolicy | None = None,
                selection: Selection | None = None, seeds: Sequence[str] | None = None) -> PullStats:  # fmt: skip
    """``pull`` for async code: it runs on a loop of its own thread, so the caller's loop keeps serving;
    cancelling the awaiting task stops it once unwound, keeping what it verified for the next pull."""
    url = remote_url(remote)
    return await privateloop.run_async(lambda: pull_here(cache, tag, url, concurrency=concurrency, progress=progress,
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
        return PullStats(info, fetched, reused, time.perf_counter() - start, self.seeded)

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
        workers = await Workers.start("cas.fetchworker", count) if count else None
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


def ranges_for(wanted: dict[bytes, list[Target]], raw_len: dict[bytes, int], locations: dict[bytes, Location],
               where: str) -> list[Range]:  # fmt: skip
    """The pack ranges holding the wanted chunks; a chunk the locator does not place is a CorruptObject."""
    for cid in wanted:
        if cid not in locations:
            raise CorruptObject(f"{where} does not say where chunk {cid.hex()} is")
    return plan(wanted, raw_len, locations)


class LocalCopyRefused(Exception):
    """A file assembled with bytes copied from local blobs failed its hash: a blob of this cache no longer
    holds what the chunk index says (changed through a hardlink, or damaged on disk)."""


class _Sources:
    """Local blobs open for copying, the last ``KEEP`` used; a blob gone since the chunk index named it is
    forgotten there (its chunks are fetched instead)."""

    KEEP = 16

    def __init__(self, cache: LocalCache):
        self.cache = cache
        self.fds: OrderedDict[tuple[bytes, bool], int] = OrderedDict()
        self.gone: set[tuple[bytes, bool]] = set()

    def open(self, blob: tuple[bytes, bool]) -> int | None:
        if blob in self.fds:
            self.fds.move_to_end(blob)
            return self.fds[blob]
        if blob in self.gone:
            return None
        try:
            fd = os.open(self.cache.objects.blob_path(*blob), os.O_RDONLY)
        except FileNotFoundError:
            self.cache.chunk_index().forget_file(blob[0])
            self.gone.add(blob)
            return None
        self.fds[blob] = fd
        if len(self.fds) > self.KEEP:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Assembly:
    """The part files one pull assembles: the tree entry each becomes, its chunks in order, and for every
    chunk still wanted, where its bytes go (a chunk verified by an interrupted pull is not wanted again)."""

    def __init__(self, work: Path, files: list[FileEntry]):
        self.work = work
        self.entries: dict[str, FileEntry] = {}  # part file: the tree entry it becomes
        self.layout: dict[str, list[tuple[int, int]]] = {}  # part file: its chunks (offset, length) in order
        self.wanted: dict[bytes, list[Target]] = defaultdict(list)
        self.raw_len: dict[bytes, int] = {}
        # Part files of one chunk: their whole-file hash is that chunk's id, verified as it is decoded.
        self.single: dict[str, bytes] = {}
        self.copied: set[str] = set()  # part files holding bytes copied from local blobs
        folder = str(work)
        present = set(os.listdir(folder))  # what an interrupted pull left: one listing, not a stat per file
        for f in files:
            name = f"{f.file_id.hex()}{'.x' if f.executable else ''}.part"
            part = os.path.join(folder, name)
            if part not in self.entries:  # the same file twice in one model is assembled once
                self._add(part, f, name in present)

    def _add(self, part: str, f: FileEntry, present: bool) -> None:
        self.entries[part] = f
        done = self._resumed(part, f.size) if present and f.size >= LOG_MIN_BYTES else None
        if done is None:  # a small file is fetched again whole: it keeps no log
            new_part(part, f.size, exists=present)
            done = set()
        offset, chunks = 0, self.layout.setdefault(part, [])
        chunk_list = list(f.chunk_list())
        if len(chunk_list) == 1 and 0 not in done:  # a chunk an earlier pull logged is hashed again from disk
            self.single[part] = chunk_list[0][0]
        for cid, length in chunk_list:
            if offset not in done:
                self.wanted[cid].append(Target(part, offset))
                self.raw_len[cid] = length
            chunks.append((offset, length))
            offset += length

    @staticmethod
    def _resumed(part: str, size: int) -> set[int] | None:
        """The offsets an interrupted pull verified in a large part file it left, or None to start it anew."""
        st = os.lstat(part)
        return read_done(part) if stat.S_ISREG(st.st_mode) and st.st_size == size else None

    def copy_local(self, cache: LocalCache, progress: Progress | None) -> int:
        """Copy every wanted chunk a local blob holds, no longer wanted; returns the bytes reused.  Nothing is
        hashed here: the part file's whole-file hash checks these bytes with the rest (``check``)."""
        runs = copy_runs(self.wanted, cache.chunk_index().find(list(self.wanted)))
        reused = 0
        parts, sources = Parts(), _Sources(cache)
        try:
            for run in runs:
                src = sources.open(run.blob)
                if src is None:
                    continue
                parts.copy(src, run.blob_offset, run.length, run.part, run.offset)
                for cid, target in run.chunks:
                    self.wanted[cid].remove(target)
                    if not self.wanted[cid]:
                        del self.wanted[cid]
                parts.mark([t for _, t in run.chunks])
                self.copied.add(run.part)
                self.single.pop(run.part, None)  # its bytes were not decoded here: the file is hashed
                reused += run.length
                if progress:
                    progress(run.length)
        finally:
            parts.close()
            sources.close()
        return reused

    def copy_seeds(self, dirs: Sequence[str], files: list[FileEntry], progress: Progress | None) -> int:
        """Copy every wanted chunk a file in the seed folders holds, each checked against its id as it is
        read (see ``seeds``); returns the bytes copied."""
        places = seeds_module.SeedIndex(dirs, files, set(self.wanted)).places
        parts, copied = Parts(), [0]

        def write(cid: bytes, data: bytes) -> None:
            targets = self.wanted.pop(cid)
            parts.write(targets, data)
            parts.mark(targets)
            copied[0] += len(data) * len(targets)
            if progress:
                progress(len(data) * len(targets))

        try:
            seeds_module.copy(places, write)
        finally:
            parts.close()
        return copied[0]

    def large_parts(self) -> list[str]:
        """The part files worth flushing behind the download (``FLUSH_MIN_BYTES`` and more), largest first."""
        large = {t.part for t in self.targets() if self.entries[t.part].size >= FLUSH_MIN_BYTES}
        return sorted(large, key=lambda p: -self.entries[p].size)

    def targets(self) -> Iterator[Target]:
        return (t for targets in self.wanted.values() for t in targets)

    def ranges(self, locations: dict[bytes, Location], where: str) -> list[Range]:
        """The pack ranges to request for every chunk still wanted."""
        return ranges_for(self.wanted, self.raw_len, locations, where)

    def check(self, digests: dict[str, bytes], tag: str, url: str) -> None:
        """Every part file hashes to its file id, or the pull stores nothing: each bad part is discarded, and
        if bytes copied from local blobs may be why, ``LocalCopyRefused`` says to assemble it again."""
        bad = [part for part, f in self.entries.items() if digests[part] != f.file_id]
        for part in bad:
            Path(part).unlink()
            Path(part + ".done").unlink(missing_ok=True)
        if bad and all(part in self.copied for part in bad):
            raise LocalCopyRefused(self.entries[bad[0]].path)
        if bad:
            path = self.entries[next(p for p in bad if p not in self.copied)].path
            raise CorruptObject(f"{tag}: {path} assembled from verified chunks does not hash to its file id; "
                                "the partial file was discarded: pull again, and if this repeats the tree in "
                                f"{url} is inconsistent")  # fmt: skip

    def publish(self, cache: LocalCache) -> None:
        """Every part file becomes its blob, all flushed together in a durable cache (for many files one
        syncfs; a few large ones were mostly flushed behind the download already)."""
        todo = [(part, f.file_id, f.executable) for part, f in self.entries.items()]
        for part in cache.objects.store_blobs(todo, cache.durable):  # stored already: not needed
            os.unlink(part)
        for part, f in self.entries.items():
            if f.size >= LOG_MIN_BYTES:  # smaller part files keep no log
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part + ".done")
