"""gc: remove what no ref needs, then evict least recently used versions until the cache fits its budget.

It holds the objects lock exclusively, so no add, pull or materialize is
writing while it judges what is live (they wait; a gc started after a pull
skips when the cache is busy).  Only what can come back is evicted: every
version of the tree was pulled from or pushed to a repository.  A version
stored here only, one a running process has leased (this one included) and
the one just pulled stay, and the report says which stayed and why when the
budget is not met.  Evicting a version is ``cas rm`` under the lease check:
ref first, then snapshot, tree and the blobs no other version uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..content.ref import ModelInfo, recency
from . import leftovers, owners
from .locks import DEFAULT_TIMEOUT, Locks
from .objects import ObjectStore
from .refs import Refs
from .snapshots import Snapshots
from .space import Inventory, disk_usage, format_size
from .usage import UsageLog

if TYPE_CHECKING:
    from .chunkindex import ChunkIndex

IN_USE = "in use by a running process"
HERE_ONLY = "stored here only: push it to a repository so it can come back, or remove it with 'cas rm {tag}'"
KEPT = "asked to keep it (just pulled)"
ITSELF = "(the cache itself)"  # what stays when no model is left to evict: the chunk index, locks, folders


class Kept(NamedTuple):
    tag: str
    reason: str


class GcReport(NamedTuple):
    """What a gc removed (or, in a dry run, would remove)."""

    removed: list[str]  # leftovers: orphaned objects and snapshots, temporaries of dead processes
    evicted: list[ModelInfo]  # versions evicted to fit the budget
    freed: int  # bytes on disk
    size_before: int
    size_after: int
    max_size: int | None
    kept: list[Kept]  # versions that stayed although the cache is over budget, and why
    dry_run: bool

    @property
    def over_budget(self) -> bool:
        return self.max_size is not None and self.size_after > self.max_size

    def to_dict(self) -> dict[str, object]:
        return {"removed": self.removed, "evicted": [i.tag for i in self.evicted], "freed": self.freed,
                "size_before": self.size_before, "size_after": self.size_after, "max_size": self.max_size,
                "over_budget": self.over_budget, "kept": [{"tag": k.tag, "reason": k.reason} for k in self.kept],
                "dry_run": self.dry_run}  # fmt: skip


class Collector:
    """One gc of one cache, through its parts."""

    def __init__(self, objects: ObjectStore, refs: Refs, snapshots: Snapshots, locks: Locks,
                 chunk_index: Callable[[], ChunkIndex | None], *, dry_run: bool) -> None:  # fmt: skip
        self.objects, self.refs, self.snapshots, self.locks = objects, refs, snapshots, locks
        self.chunk_index, self.dry_run = chunk_index, dry_run
        self.usage = UsageLog(os.fspath(objects.root), refs, snapshots)
        self.removed: list[str] = []
        self.evicted: list[ModelInfo] = []
        self.kept: list[Kept] = []
        self.considered: set[str] = set()  # roots evicted or kept so far

    def run(self, max_size: int | None, keep: Collection[str], wait: bool = True) -> GcReport:
        """Collect; ``keep``: roots never evicted; ``wait=False`` raises CacheBusy at once when another
        process is writing to the cache."""
        with self.locks.hold("objects", timeout=DEFAULT_TIMEOUT if wait else 0):
            inv = Inventory(self.objects, self.refs)
            before = disk_usage(self.objects.root)
            freed = self._remove_leftovers(inv)
            roots = inv.roots()
            recorded = self.usage.recorded()
            last = {root: self.usage.last_used(root, infos, recorded) for root, infos in roots.items()}
            if max_size is not None and before - freed > max_size:
                freed += self._evict(inv, roots, last, before - freed - max_size, keep)
            after = before - freed
            if not self.dry_run:
                after, more = self._settle_within(inv, roots, last, max_size, keep)
                freed += more
        if max_size is not None and after <= max_size:
            self.kept.clear()  # the budget is met: what stayed on the way needs no word
        if max_size is not None and after > max_size and not self.kept:
            why = f"its chunk index, lock files and folders take {format_size(after)} once every model that can come"
            self.kept.append(Kept(ITSELF, why + " back is evicted: a smaller budget cannot be met"))
        return GcReport(self.removed, self.evicted, freed, before, after, max_size, self.kept, self.dry_run)

    def _settle_within(self, inv: Inventory, roots: dict[str, list[ModelInfo]], last: dict[str, float],
                       max_size: int | None, keep: Collection[str]) -> tuple[int, int]:  # fmt: skip
        """Settle, then measure what df sees; while that is over the budget, evict more (an eviction can free
        less than its estimate: what a killed gc left, say).  Returns (bytes measured, bytes freed here)."""
        self._settle(inv, last)
        after, freed = disk_usage(self.objects.root), 0
        while max_size is not None and after > max_size:
            more = self._evict(inv, roots, last, after - max_size, keep)
            if not more:
                break
            freed += more
            self._settle(inv, last)
            after = disk_usage(self.objects.root)
        return after, freed

    def _remove_leftovers(self, inv: Inventory) -> int:
        """Remove what no ref needs; returns the bytes on disk it held."""
        found = leftovers.find(self.objects, self.snapshots, inv.trees, partial_pulls=True)
        if not self.dry_run:
            owners.sweep(self.locks.dir)  # the owner locks of ended processes (a few bytes each: not reported)
        seen = {(st.st_dev, st.st_ino) for st in _stats(inv.blob_bytes)}  # live blobs' bytes are not freed
        freed = 0
        for root in found.snapshots:
            paths = [self.snapshots.dir / name for name in self.snapshots.names_of(root)]
            held = sum(disk_usage(p, seen) for p in paths)
            if (self.dry_run and not self.snapshots.in_use(root)) or (not self.dry_run and self.snapshots.remove(root)):
                self.removed += [str(p) for p in paths]
                freed += held
        for path in found.paths:
            held = disk_usage(path, seen)
            try:
                if not self.dry_run:
                    leftovers.remove(path)
            except PermissionError:
                continue  # another user's, in a shared cache: their gc or verify removes it
            self.removed.append(str(path))
            freed += held
        return freed

    def _evict(self, inv: Inventory, roots: dict[str, list[ModelInfo]], last: dict[str, float], excess: int,
               keep: Collection[str]) -> int:  # fmt: skip
        """Evict least recently used roots until ``excess`` bytes are freed; returns the bytes freed."""
        freed = 0
        for root in sorted(roots, key=lambda r: (last[r], max(recency(i) for i in roots[r]))):
            if freed >= excess:
                break
            if root in self.considered:  # evicted or kept by an earlier round of this run
                continue
            self.considered.add(root)
            infos = roots[root]
            kept = self._why_kept(inv, root, keep)
            if not kept:
                reason = self._evict_root(root, infos)
                kept = [] if reason is None else [Kept(i.tag, reason) for i in infos]
            if kept:
                self.kept.extend(kept)
            else:
                self.evicted.extend(infos)
                freed += self._free_blobs(inv, root, len(infos))
        return freed

    @staticmethod
    def _why_kept(inv: Inventory, root: str, keep: Collection[str]) -> list[Kept]:
        """Why the versions of ``root`` cannot be evicted, if they cannot: asked to keep, or one of them is
        stored here only (the others name it: their files are its files)."""
        versions = [(info, remotes) for info, remotes in inv.versions if info.root == root]
        if root in keep:
            return [Kept(info.tag, KEPT) for info, _ in versions]
        here_only = [info.tag for info, remotes in versions if not remotes]
        if not here_only:
            return []
        same = f"the same files as {', '.join(here_only)}, which is stored here only"
        return [Kept(info.tag, HERE_ONLY.format(tag=info.tag) if not remotes else same) for info, remotes in versions]

    def _evict_root(self, root: str, infos: list[ModelInfo]) -> str | None:
        """Remove the refs and snapshot of ``root`` unless a process leases it; the reason it stays, if so."""
        if self.dry_run:
            return IN_USE if self.snapshots.in_use(root) else None
        if not self.snapshots.remove(root, mine_count=True):
            return IN_USE
        for name in sorted({i.name for i in infos}):
            self.refs.remove(name, [i.version for i in infos if i.name == name])
        return None

    def _free_blobs(self, inv: Inventory, root: str, versions: int) -> int:
        """Remove the tree of an evicted root and the blobs no remaining version uses; returns their bytes."""
        tree = self.objects.tree_path(root)
        freed = disk_usage(tree)
        if not self.dry_run:
            tree.unlink(missing_ok=True)
        for blob in inv.blobs_by_root.pop(root, set()):
            inv.users[blob] -= versions
            if inv.users[blob] <= 0:
                freed += inv.blob_bytes.pop(blob, 0)
                if not self.dry_run:
                    blob.unlink(missing_ok=True)
        return freed

    def _settle(self, inv: Inventory, last: dict[str, float]) -> None:
        """Forget the chunks of removed blobs, keep the live roots' last use, then reset their lease files
        (a removal of the file while no process holds it: the next first use creates it anew)."""
        live = inv.blobs_by_root
        index = self.chunk_index()
        if index is not None:
            index.retain({_file_id(b) for blobs in live.values() for b in blobs})
        self.usage.record({r: last[r] for r in live})
        for root in live:
            if self.snapshots.first_use(root) is not None:  # used since the last gc: start counting anew
                self.snapshots.reset_first_use(root)


def _file_id(blob: Path) -> bytes:
    return bytes.fromhex(blob.name.removesuffix(".x"))


def _stats(paths: Collection[Path]) -> list[os.stat_result]:
    out = []
    for p in paths:
        try:
            out.append(os.stat(p))
        except FileNotFoundError:
            pass
    return out
