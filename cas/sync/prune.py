"""Removing models from a repository: ``rm --remote`` takes refs away, ``prune`` the data no ref reaches.

A repository is shared, and nothing stops a host from pushing or pulling
while another prunes, so prune works in two phases, as rustic's prune does
(and restic's users asked for), with the state kept in the repository
itself (``prune/marks``, see ``repo.marks``):

1. Mark.  A run lists every ref, reads the locators of their roots, and
   finds the trees, locators and packs (with their indexes) none of them
   reaches; it records each with the time it first found it so.  Nothing
   is deleted on sight.
2. Delete.  A later run deletes a marked object only if its mark is older
   than the grace period (``--grace``, a day by default) and the run's own
   listing, made after that, still finds it unreachable; an object a ref
   reaches again is unmarked.  Marks become deletions by one compare-and-set
   of the marks document (``deleting``), then the objects go (locators,
   trees, pack indexes, packs) and leave the document.

Packs whose dead bytes pass ``--max-unused`` (10% by default, restic's
threshold) are repacked: their live chunks are copied into new packs
(``packing.PackWriter``), each locator using them is rewritten by
compare-and-set to point at the copies, and the old pack, unreachable now,
is marked like any other.  A pull that read the old locator keeps reading
the old pack, which stays for the grace period.

The races, and what covers them:

- A push in progress (packs written, no ref yet): its packs are unreachable
  and may be marked, but not deleted before the grace period has passed
  since the mark, and a ref that lands before that is seen by the deleting
  run's listing (made after the grace period), which unmarks them.  So a
  push that takes less than the grace period never loses its data.
- A push that found chunks "already present" in a pack a prune is about to
  mark or delete: before it writes anything, the push takes every object it
  reuses (those packs, its tree and locator, and the packs of a locator
  already there) out of the marks, by compare-and-set on the same document
  (``Repository.reserve``).  Either the reservation comes first (the object
  is no longer marked, and the deleting run leaves it: marks are committed
  for deletion only if still marked when the commit lands) or the commit
  comes first (the push sees the object in ``deleting``, or finds the pack
  gone when it lists the packs again after reserving, and uploads those
  chunks again; its own tree being deleted stops it with a clear error).
  A run whose listing is older than the push's ref may mark them again,
  afresh: the grace period counts from there, and the push's ref is in the
  listing of any run that could delete them.  A pack repacked under the
  push is the same case: marked, not deleted, and reached again by the
  push's ref, whose locator still names it.
- A pull of a ref that exists when it starts: either the ref is still there
  when a run lists refs (its objects are reachable), or ``rm --remote``
  removed it, which first records the root as removed.  What a removed root
  reaches is marked like anything unreachable but not deleted before the
  grace period has passed since the removal, and a run that finds a removal
  it did not account for (written while it ran) starts over.  So a pull
  that takes less than the grace period completes.
- A prune killed at any point: marks are written whole (compare-and-set), a
  deletion committed but unfinished is finished by the next run, and
  deleting top-down (locators before packs) never leaves a reachable object
  pointing at a missing one.  A repack killed midway leaves new packs that
  nothing reaches: the next run marks them.

``--grace 0`` deletes on the second run what the first marked: only for a
repository nobody pushes to meanwhile, and a pull of a ref removed or
repacked while it runs may then fail (with an error, never wrong bytes).  Times are the pruning host's clock;
the grace period must exceed the clock skew between hosts and the longest
push or pull.  Byte counts are pack bytes, as the pack indexes declare them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from typing import NamedTuple

from ..content import codec, tags
from ..content.ref import ModelInfo
from ..errors import CasError, InvalidInput, NotFound, RepoError
from ..repo.format import (
    IndexEntry,
    Location,
    decode_index,
    decode_locator,
    encode_locator,
    index_key,
    iter_ranges,
    locator_key,
    marks_key,
    pack_key,
    tree_key,
)
from ..repo.marks import Marks
from ..repo.marks import decode as decode_marks
from ..repo.marks import encode as encode_marks
from ..repo.repository import Repository, remote_url, run_with_repository
from .packing import PackWriter

GRACE = 86_400.0  # a day, in seconds
MAX_UNUSED = 0.10  # a pack with more dead bytes than this fraction is repacked
STARTS = 5  # runs started over because an rm --remote landed meanwhile, before giving up
READ_SPAN = 4 << 20  # bytes per range read when repacking
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Usage(NamedTuple):
    count: int  # type: ignore[assignment]  # objects (trees, locators, packs); shadows tuple.count, as always
    bytes: int  # pack bytes


class PruneReport(NamedTuple):
    """What a prune did, or with ``dry_run`` would do."""

    marked: Usage  # unreachable, waiting for the grace period after this run
    deleted: Usage  # deleted by this run
    repacked: Usage  # packs whose live chunks were copied; bytes: those live bytes
    kept: Usage  # packs a ref reaches, kept as they are (the packs a repack writes are not counted)
    dry_run: bool


def parse_duration(text: str) -> float:
    """Seconds in ``0``, ``45s``, ``30m``, ``12h``, ``1d`` or ``2w``."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if m is None or (not m.group(2) and float(m.group(1)) != 0):
        raise InvalidInput(f"duration {text!r}: expected a number and a unit, like 30m, 12h, 1d or 2w (or 0)")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def prune(remote: str | None = None, *, grace: float = GRACE, max_unused: float = MAX_UNUSED,
          dry_run: bool = False) -> PruneReport:  # fmt: skip
    """Mark what no ref reaches in ``remote`` (else ``$CAS_REMOTE``), delete what was marked more than ``grace``
    seconds ago and is still unreachable, repack packs more than ``max_unused`` dead; from any thread."""
    if grace < 0 or not 0 <= max_unused <= 1:
        raise InvalidInput("grace must be at least 0 seconds, and max_unused a fraction from 0 to 1")
    return run_with_repository(lambda repo: _Prune(repo, grace, max_unused, dry_run).run(), remote_url(remote))


def remove_remote(tag_list: Iterable[str], remote: str | None = None) -> list[ModelInfo]:
    """Remove refs from a repository: ``name:version``, ``name:latest`` (the newest) or ``name`` (every
    version); the listings follow, the data goes with a later prune."""
    return run_with_repository(lambda repo: _remove(repo, list(tag_list)), remote_url(remote))


async def _remove(repo: Repository, tag_list: list[str]) -> list[ModelInfo]:
    victims: list[ModelInfo] = []
    for tag in tag_list:
        if ":" in tag:
            victims.append(await repo.ref(tag))
            continue
        found = await repo.versions(tags.validate_name(tag))
        if not found:
            raise NotFound(f"model {tag} has no version in the repository {repo.url}")
        victims += found
    when = time.time()
    for info in victims:
        await repo.remove_ref(info, when)
    return victims


class _Stale(Exception):
    """An rm --remote recorded a removal this run did not account for: start over."""


class Survey(NamedTuple):
    """A repository as one run saw it."""

    live: dict[str, dict[bytes, Location]]  # root -> locator, for every root a ref names
    removed: dict[str, dict[bytes, Location]]  # the same for roots removed within the grace period (if still here)
    keys: set[str]  # every tree, locator and pack (with or without its index) here, as marks name them
    indexes: dict[str, list[IndexEntry]]  # pack id -> entries, for every indexed pack
    sizes: dict[str, int]  # pack id -> bytes, as its index declares


class _Prune:
    """One run of prune on one repository."""

    def __init__(self, repo: Repository, grace: float, max_unused: float, dry_run: bool):
        self.repo, self.grace, self.max_unused, self.dry_run = repo, grace, max_unused, dry_run

    async def run(self) -> PruneReport:
        for _ in range(STARTS):
            try:
                return await self._once()
            except _Stale:
                continue
        raise RepoError(f"refs of {self.repo.url} were removed during every one of {STARTS} prunes; prune again")

    async def _once(self) -> PruneReport:
        start = time.time()
        survey = await self._survey(start)
        victims = self._repack_candidates(survey)
        repacked = Usage(len(victims), sum(self._live_bytes(survey, p) for p in victims))
        if victims and not self.dry_run:
            await self._repack(survey, victims)
        unreachable = self._unreachable(survey) | {pack_key(p) for p in victims}
        marks = await self._commit(survey, unreachable, _reached(survey.removed), start)
        live = _reached(survey.live) | _reached(survey.removed)
        if not self.dry_run:
            live |= await self._reached_now()
        doomed = {k: t for k, t in marks.deleting.items() if k not in live}
        deleted = Usage(len(doomed), self._bytes(survey, doomed))
        if not self.dry_run:
            await self._delete(doomed, set(marks.deleting))
        packs = {loc.pack_id for locs in survey.live.values() for loc in locs.values()} - set(victims)
        kept = Usage(len(packs), sum(survey.sizes.get(p, 0) for p in packs))
        return PruneReport(Usage(len(marks.marked), self._bytes(survey, marks.marked)), deleted, repacked, kept,
                           self.dry_run)  # fmt: skip

    # -- what is here, and what reaches it -----------------------------------------------------

    async def _survey(self, start: float) -> Survey:
        """The marks first, then the refs, then everything else: a removal after the marks were read shows up
        as a ref here, or as a removal the commit finds unaccounted for."""
        removed = {r for r, t in (await self.repo.marks()).removed.items() if t > start - self.grace}
        try:
            ref_keys = await self.repo.backend.list("refs/")
        except RepoError as e:
            raise RepoError(f"prune needs a repository it can list and delete in, with the token for cas serve: "
                            f"{e}") from None  # fmt: skip
        infos = await asyncio.gather(*(self._ref(k) for k in ref_keys))
        refs = sorted({i.root for i in infos if i is not None})
        removed -= set(refs)
        locators = dict(zip(refs, await asyncio.gather(*(self._locator(r, required=True) for r in refs))))
        gone = dict(zip(removed, await asyncio.gather(*(self._locator(r, required=False) for r in removed))))
        trees, locs, packs = await asyncio.gather(*(self.repo.backend.list(p) for p in ("trees/", "locators/",
                                                                                        "packs/")))  # fmt: skip
        indexed = sorted(k[len("packs/") : -len(".idx")] for k in packs if k.endswith(".idx"))
        read = dict(zip(indexed, await asyncio.gather(*(self._index(p) for p in indexed))))
        indexes = {p: index for p, index in read.items() if index is not None}
        return Survey({r: loc for r, loc in locators.items() if loc is not None},
                      {r: loc or {} for r, loc in gone.items()}, {k.removesuffix(".idx") for k in trees + locs + packs},
                      {p: entries for p, (_, entries) in indexes.items()},
                      {p: size for p, (size, _) in indexes.items()})  # fmt: skip

    async def _ref(self, key: str) -> ModelInfo | None:
        _, name, version = key.split("/")
        try:
            return await self.repo.ref(f"{name}:{version}")
        except NotFound:  # removed since it was listed: its removal is in the marks, which the commit checks
            return None

    async def _locator(self, root: str, required: bool) -> dict[bytes, Location] | None:
        try:
            return await self.repo.locator(root)
        except NotFound:
            if not required:  # a removed root whose data a prune deleted already
                return None
            raise RepoError(f"{locator_key(root)} is missing in {self.repo.url} but a ref names it, so what is live "
                            "cannot be known; nothing was pruned: run cas verify --remote") from None  # fmt: skip

    async def _index(self, pack_id: str) -> tuple[int, list[IndexEntry]] | None:
        try:
            return decode_index(await self.repo.pack_index(pack_id))
        except NotFound:  # deleted since it was listed, by another prune
            return None
        except CasError as e:
            raise RepoError(f"{index_key(pack_id)} in {self.repo.url}: {e}; nothing was pruned: run cas verify "
                            "--remote") from None  # fmt: skip

    def _unreachable(self, survey: Survey) -> set[str]:
        return survey.keys - _reached(survey.live)

    # -- repacking -----------------------------------------------------------------------------

    def _used(self, survey: Survey, pack_id: str) -> set[int]:
        """The offsets in a pack that live locators point at."""
        return {loc.offset for locs in survey.live.values() for loc in locs.values() if loc.pack_id == pack_id}

    def _live_bytes(self, survey: Survey, pack_id: str) -> int:
        used = self._used(survey, pack_id)
        return sum(e.length for e in survey.indexes[pack_id] if e.offset in used)

    def _repack_candidates(self, survey: Survey) -> list[str]:
        """Live indexed packs whose dead bytes pass the threshold."""
        live = {loc.pack_id for locs in survey.live.values() for loc in locs.values()}
        return sorted(p for p in live & set(survey.indexes)
                      if survey.sizes[p] - self._live_bytes(survey, p) > self.max_unused * survey.sizes[p])  # fmt: skip

    async def _repack(self, survey: Survey, victims: list[str]) -> None:
        """Copy the live chunks of ``victims`` into new packs, then point every live locator at the copies."""
        writer = PackWriter(self.repo)
        try:
            for pack_id in victims:
                await self._copy_live(survey, pack_id, writer)
            await writer.close()
        finally:
            await writer.abort()
        moved, old = writer.locations, set(victims)
        for root, locs in survey.live.items():
            if any(loc.pack_id in old for loc in locs.values()):
                await self.repo.backend.update(locator_key(root), lambda data: _moved(data, moved, old))

    async def _copy_live(self, survey: Survey, pack_id: str, writer: PackWriter) -> None:
        """Read a pack's live chunks in merged ranges, verify each, and hand it to the writer."""
        used = self._used(survey, pack_id)
        entries = {e.offset: e for e in survey.indexes[pack_id] if e.offset in used}
        for start, end in iter_ranges([(e.offset, e.length) for e in entries.values()], 0, READ_SPAN):
            data = memoryview(await self.repo.read(pack_id, start, end))
            for offset in sorted(o for o in entries if start <= o < end):
                e = entries[offset]
                blob = data[offset - start : offset - start + e.length]
                codec.decode(blob, e.raw_length, e.chunk_id)  # never copy a damaged chunk
                await writer.add(e.chunk_id, e.raw_length, bytes(blob))

    # -- marking and deleting ------------------------------------------------------------------

    async def _commit(self, survey: Survey, unreachable: set[str], protected: set[str], start: float) -> Marks:
        """One compare-and-set of the marks: unmark what is reachable, mark what is newly unreachable, move marks
        older than the grace period (made by an earlier run) to ``deleting``, except what a recently removed ref
        reached (``protected``).  A dry run computes it only."""
        accounted = set(survey.live) | set(survey.removed)
        result: list[Marks] = []

        def change(data: bytes | None) -> bytes | None:
            marks = decode_marks(data)
            if {r for r, t in marks.removed.items() if t > start - self.grace} - accounted:
                raise _Stale()
            result[:] = [_next_marks(marks, unreachable - protected, unreachable, start, time.time(), self.grace)]
            new = encode_marks(result[0])
            return None if data == new or self.dry_run else new

        await self.repo.backend.update(marks_key(), change)
        return result[0]

    def _bytes(self, survey: Survey, keys: Iterable[str]) -> int:
        return sum(survey.sizes.get(k[len("packs/") :], 0) for k in keys if k.startswith("packs/"))

    async def _reached_now(self) -> set[str]:
        """What the refs reach at this moment, read again just before deleting: the marks are a document anyone
        who can write the repository can forge, so they never decide alone that a live object goes."""
        ref_keys = await self.repo.backend.list("refs/")
        roots = sorted({i.root for i in await asyncio.gather(*(self._ref(k) for k in ref_keys)) if i is not None})
        locators = await asyncio.gather(*(self._locator(r, required=True) for r in roots))
        return _reached({r: loc for r, loc in zip(roots, locators) if loc is not None})

    async def _delete(self, doomed: dict[str, float], done: set[str]) -> None:
        """Delete ``doomed`` (what the marks commit to deleting that no ref reaches), top-down, then take
        ``done`` (all the marks committed to, live ones included: they are not to be deleted) out of the marks."""
        order = sorted(doomed, key=lambda k: ("locators/", "trees/", "packs/").index(k[: k.index("/") + 1]))
        for key in order:
            if key.startswith("packs/"):
                await self.repo.delete(index_key(key[len("packs/") :]))
            await self.repo.delete(key)

        def change(data: bytes | None) -> bytes | None:
            marks = decode_marks(data)
            left = {k: t for k, t in marks.deleting.items() if k not in done}
            return None if left == marks.deleting else encode_marks(Marks(marks.marked, left, marks.removed))

        await self.repo.backend.update(marks_key(), change)


def _next_marks(marks: Marks, deletable: set[str], unreachable: set[str], start: float, now: float,
                grace: float) -> Marks:  # fmt: skip
    """The marks after one run that started at ``start``: reachable keys unmarked, ``deletable`` keys marked by
    an earlier run more than ``grace`` before ``start`` committed for deletion, new unreachable keys marked
    ``now`` (as they become visible), removals older than the grace period forgotten."""
    due = {k for k, t in marks.marked.items() if k in deletable and t <= start - grace and t < start}
    deleting = {**marks.deleting, **dict.fromkeys(due, now)}
    marked = {k: marks.marked.get(k, now) for k in unreachable if k not in deleting}
    removed = {r: t for r, t in marks.removed.items() if t > start - grace}
    return Marks(marked, deleting, removed)


def _reached(locators: dict[str, dict[bytes, Location]]) -> set[str]:
    """The keys these roots reach: their trees, locators and packs."""
    keys = {k for root in locators for k in (tree_key(root), locator_key(root))}
    return keys | {pack_key(loc.pack_id) for locs in locators.values() for loc in locs.values()}


def _moved(data: bytes | None, moved: dict[bytes, Location], old: set[str]) -> bytes | None:
    """A locator with its chunks in the repacked packs ``old`` pointed at their copies; None if none is."""
    if data is None:
        return None
    locs = decode_locator(data)
    new = {cid: moved[cid] if loc.pack_id in old and cid in moved else loc for cid, loc in locs.items()}
    return None if new == locs else encode_locator(new)
