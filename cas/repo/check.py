"""Checking a repository: what `cas verify --remote URL` reports.

Every ref must name a tree that exists and hashes to its name, with a
locator that places every chunk of the tree inside a pack that exists and
has an index, and every index its pack.  A pack without an index is what an
interrupted push leaves (packs go up before their indexes): an orphan, not
damage.  A ref found wrong is looked at again before it is reported: a
prune or ``rm --remote`` running beside the check may have repacked its
chunks into packs listed after ours, or removed it.  The
deep check also reads each pack (streamed in windows: memory is one
window) and proves its name, its size and every chunk in it.  Nothing is repaired:
a repository is shared, and what is wrong with it is for its owner to fix
(re-pushing the model restores whatever a ref lacks).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from ..content import codec
from ..content.digest import file_hasher
from ..content.ref import ModelInfo
from ..content.tree import FileEntry
from ..errors import CasError, CorruptObject, NotFound, RepoError
from .format import IndexEntry, Location, decode_index, pack_key
from .repository import Repository, remote_url, run_with_repository

WINDOW = 16 << 20  # bytes of a pack read at a time by the deep check


class RepoReport(NamedTuple):
    refs: int
    packs: int
    problems: list[str]  # a ref could not be pulled whole, or stored bytes are not what their name says
    orphans: list[str]  # left by an interrupted push: harmless, no ref needs them

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(remote: str | None = None, *, deep: bool = False) -> RepoReport:
    """Check the repository at ``remote`` (else ``$CAS_REMOTE``); ``deep`` re-reads every pack."""
    return run_with_repository(lambda repo: _Check(repo, deep).run(), remote_url(remote))


class _Check:
    """One check of a repository and the problems it found."""

    def __init__(self, repo: Repository, deep: bool):
        self.repo, self.deep = repo, deep
        self.problems: list[str] = []
        # deep: what each pack holds where, as its index says (and the pack's bytes prove): pack -> offset ->
        # (chunk id, encoded length), so each locator entry is checked against the bytes it points at
        self.placed: dict[str, dict[int, tuple[bytes, int]]] = {}

    async def run(self) -> RepoReport:
        versions = await self.repo.versions()
        packs, indexed = await self._listing(versions)
        sizes = await self._indexes(packs, indexed)
        orphans = [f"packs/{p}: a pack without an index" for p in sorted(packs - indexed)]
        for info in versions:
            found = await self._ref_problems(info, sizes)
            self.problems += await self._recheck(info, sizes) if found else []
        return RepoReport(len(versions), len(sizes), self.problems, orphans)

    async def _listing(self, versions: list[ModelInfo]) -> tuple[set[str], set[str]]:
        """The packs here and those with an index."""
        try:
            return await self.repo.packs()
        except RepoError:  # a static server lists nothing: check the packs the refs reach
            reached = await self._reachable(versions)
            return reached, reached

    async def _recheck(self, info: ModelInfo, sizes: dict[str, int]) -> list[str]:
        """A ref's problems after a second look: while the check ran, ``rm --remote`` may have removed the
        ref, or a prune repacked its chunks into packs our listing predates.  Only what is still wrong counts."""
        try:
            info = await self.repo.ref(info.tag)
        except NotFound:
            return []
        packs, indexed = await self._listing([info])
        new = (packs & indexed) - sizes.keys()
        sizes.update(await self._indexes(new, new))
        return await self._ref_problems(info, sizes)

    async def _reachable(self, versions: list[ModelInfo]) -> set[str]:
        found: set[str] = set()
        for info in versions:
            with contextlib.suppress(CasError):  # a missing locator is reported by _ref_problems
                found |= {loc.pack_id for loc in (await self.repo.locator(info.root)).values()}
        return found

    async def _indexes(self, packs: set[str], indexed: set[str]) -> dict[str, int]:
        """Each indexed pack's size as its index declares it; the deep check also reads every pack."""
        sizes: dict[str, int] = {}
        for pack_id in sorted(indexed):
            if pack_id not in packs:
                self.problems.append(f"packs/{pack_id}.idx: an index without its pack")
                continue
            try:
                size, entries = decode_index(await self.repo.pack_index(pack_id))
            except NotFound:
                continue  # pruned since the listing: a ref that needs it is looked at again
            except CasError as e:
                self.problems.append(f"packs/{pack_id}.idx: {e}")
                continue
            if self.deep and not await self._check_pack(pack_id, size, entries):
                continue
            sizes[pack_id] = size
            self.placed[pack_id] = {e.offset: (e.chunk_id, e.length) for e in entries}
        return sizes

    async def _ref_problems(self, info: ModelInfo, sizes: dict[str, int]) -> list[str]:
        """What is wrong with a ref: its tree and locator must be there and place every chunk in an indexed pack."""
        try:
            tree, _ = await self.repo.tree(info)
            locations = await self.repo.locator(info.root)
        except CorruptObject as e:  # names the ref already
            return [str(e)]
        except CasError as e:
            return [f"{info.tag}: {e}"]
        return [p for f in tree.files for p in self._file_problems(info.tag, f, locations, sizes)]

    def _file_problems(self, tag: str, f: FileEntry, locations: dict[bytes, Location],
                       sizes: dict[str, int]) -> Iterator[str]:  # fmt: skip
        for cid, _ in f.chunk_list():
            loc = locations.get(cid)
            if loc is None:
                yield f"{tag}: {f.path}: chunk {cid.hex()} has no location"
            elif loc.pack_id not in sizes:
                yield f"{tag}: {f.path}: chunk {cid.hex()} is in a missing pack {loc.pack_id}"
            elif loc.offset + loc.length > sizes[loc.pack_id]:
                yield f"{tag}: {f.path}: chunk {cid.hex()} lies past the end of its pack"
            elif self.deep and self.placed[loc.pack_id].get(loc.offset) != (cid, loc.length):
                yield (
                    f"{tag}: {f.path}: the locator places chunk {cid.hex()} at bytes {loc.offset}+{loc.length} "
                    f"of pack {loc.pack_id}, which hold another chunk or none"
                )

    async def _check_pack(self, pack_id: str, size: int, entries: list[IndexEntry]) -> bool:
        """Stream a pack in windows: prove its name and every chunk in it, holding one window (and a chunk).
        False if the pack is gone (pruned since the listing)."""
        key = pack_key(pack_id)
        hasher = file_hasher(threads=False)
        todo = deque(sorted(entries, key=lambda e: e.offset))
        held, held_from = b"", 0  # the bytes from held_from to the current window: the next chunks' beginnings
        for start in range(0, size, WINDOW):
            try:
                data = await self.repo.read(pack_id, start, min(size, start + WINDOW))
            except NotFound:
                return False
            except CasError as e:
                self.problems.append(f"{key}: {e}")
                return True
            hasher.update(data)
            held += data
            self._decode_complete(key, todo, memoryview(held), held_from, start + len(data))
            keep_from = todo[0].offset if todo else start + len(data)
            held, held_from = held[keep_from - held_from :], keep_from
        if todo:
            self.problems.append(f"{key}: chunk {todo[0].chunk_id.hex()} lies past the {size} bytes its index declares")
        if hasher.digest().hex() != pack_id:
            self.problems.append(f"{key}: its bytes do not hash to its name")
        return True

    def _decode_complete(self, key: str, todo: deque[IndexEntry], view: memoryview, held_from: int, end: int) -> None:
        """Decode and verify every chunk that now lies whole in ``view`` (the pack from ``held_from`` to ``end``)."""
        while todo and todo[0].offset + todo[0].length <= end:
            e = todo.popleft()
            try:
                codec.decode(view[e.offset - held_from : e.offset - held_from + e.length], e.raw_length, e.chunk_id)
            except CasError as err:
                self.problems.append(f"{key}: {err}")
