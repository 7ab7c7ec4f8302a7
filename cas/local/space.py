"""How much room a cache takes and what holds it: each version's bytes, those only it holds, those it
shares, and the whole cache against what separate copies would take.

Sizes are bytes on disk (``st_blocks``, each inode once, as ``du`` counts
them), so hardlinked snapshots cost nothing beyond their folders and a
budget compares with what ``df`` sees.  Budgets are written for people:
``500M``, ``20G``, ``1.5TiB``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from ..content.ref import ModelInfo, recency
from ..content.tree import FileEntry, Tree
from ..errors import CasError, InvalidInput
from .objects import ObjectStore
from .refs import Refs
from .snapshots import Snapshots

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?", re.IGNORECASE)
_POWERS = "kmgtp"


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from ``1000000``, ``500M``, ``20GB`` (powers of 1000) or ``1.5GiB`` (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise InvalidInput(f"{what} {text!r} is not a size: give bytes, or a number with K, M, G or T "
                           "(powers of 1000; KiB, MiB, GiB, TiB for powers of 1024), such as 20G")  # fmt: skip
    number, unit, binary = m.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** (_POWERS.index(unit.lower()) + 1 if unit else 0))


def format_size(n: float) -> str:
    """Bytes for people, in powers of 1000 as ``du --si`` and most storage consoles print them."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


def on_disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


def disk_usage(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk of ``path`` (a file, or a folder and all under it; symlinks not followed), each inode
    counted once across calls sharing ``seen``: what ``du -sB1`` prints."""
    seen = set() if seen is None else seen
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if (st.st_dev, st.st_ino) in seen:
        return 0
    seen.add((st.st_dev, st.st_ino))
    total, stack = on_disk(st), [os.fspath(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += on_disk(st)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return total


class Inventory:
    """The live part of a cache, read once: each version and where it came from, each tree, the bytes on
    disk of each blob, and how many versions use it."""

    def __init__(self, objects: ObjectStore, refs: Refs):
        self.versions: list[tuple[ModelInfo, list[str]]] = []
        self.trees: dict[str, Tree] = {}
        for _, _, info in refs.records():
            if isinstance(info, CasError):
                continue  # unreadable: verify reports it; what it named stays unreachable
            self.versions.append((info, refs.remotes(info)))
            if info.root not in self.trees:
                try:
                    self.trees[info.root] = objects.load_tree(info.root)
                except CasError:
                    pass  # missing or damaged: verify reports it
        self.blob_bytes: dict[Path, int] = {}
        for tree in self.trees.values():
            for blob in objects.blobs_of(tree):
                if blob not in self.blob_bytes:
                    try:
                        self.blob_bytes[blob] = on_disk(os.stat(blob))
                    except FileNotFoundError:
                        self.blob_bytes[blob] = 0
        per_root = Counter(info.root for info, _ in self.versions)
        self.users: Counter[Path] = Counter()  # blob -> versions using it
        self.blobs_by_root = {root: objects.blobs_of(tree) for root, tree in self.trees.items()}
        for root, blobs in self.blobs_by_root.items():
            for blob in blobs:
                self.users[blob] += per_root[root]

    def roots(self) -> dict[str, list[ModelInfo]]:
        """The versions of each root."""
        out: dict[str, list[ModelInfo]] = {}
        for info, _ in self.versions:
            out.setdefault(info.root, []).append(info)
        return out

    def held_by(self, root: str) -> tuple[int, int]:
        """(bytes on disk of the blobs of ``root``, those no other version uses)."""
        blobs = self.blobs_by_root.get(root, set())
        return sum(self.blob_bytes[b] for b in blobs), sum(self.blob_bytes[b] for b in blobs if self.users[b] == 1)

    def distinct_chunk_bytes(self, roots: Iterable[str]) -> int:
        """Raw bytes of the distinct chunks of these trees: what chunk-level dedup (a repository) keeps."""
        seen: dict[bytes, int] = {}
        for root in roots:
            for f in self.trees[root].files if root in self.trees else ():
                seen.update(f.chunk_list())
        return sum(seen.values())


class VersionSpace(NamedTuple):
    """One version's place on disk."""

    info: ModelInfo
    on_disk: int  # its blobs, on disk
    unique: int  # of those, the bytes no other version uses: what removing it frees
    last_used: float
    remotes: list[str]  # where it can be pulled from again; none: stored here only

    @property
    def shared(self) -> int:
        return self.on_disk - self.unique

    def to_dict(self) -> dict[str, object]:
        return {"tag": self.info.tag, "size": self.info.size, "on_disk": self.on_disk, "unique": self.unique,
                "shared": self.shared, "last_used": self.last_used, "remotes": self.remotes}  # fmt: skip


class SpaceReport(NamedTuple):
    """``cas du``: the versions shown, and totals."""

    versions: list[VersionSpace]
    logical: int  # the sum of the versions' sizes: what separate copies would take
    stored: int  # bytes on disk of the blobs they use, each once
    distinct_chunks: int  # raw bytes of their distinct chunks: what a repository stores before compression
    snapshots: int  # snapshots built (hardlinks: they add only their folders)
    leftovers: int | None  # bytes gc would free without evicting anything (None: unknown, the cache was busy)
    total: int  # everything under the cache root, on disk

    @property
    def saving(self) -> int:
        """What whole-file dedup saves against separate copies."""
        return self.logical - self.stored

    def to_dict(self) -> dict[str, object]:
        return {"versions": [v.to_dict() for v in self.versions], "logical": self.logical, "stored": self.stored,
                "saving": self.saving, "distinct_chunks": self.distinct_chunks, "snapshots": self.snapshots,
                "leftovers": self.leftovers, "total": self.total}  # fmt: skip


def space_report(objects: ObjectStore, refs: Refs, snapshots: Snapshots, only: str | None, leftover: int | None,
                 files_here: Callable[[ModelInfo, Tree], list[FileEntry]]) -> SpaceReport:  # fmt: skip
    """``cas du``: each version (of ``only``, or all), newest first, and the totals; the caller holds the objects
    lock.  A partial version counts the files it has here (``files_here``)."""
    from .usage import UsageLog

    inv = Inventory(objects, refs)
    usage = UsageLog(os.fspath(objects.root), refs, snapshots)
    recorded, roots = usage.recorded(), inv.roots()
    rows = []
    for info, remotes in sorted(inv.versions, key=lambda v: recency(v[0]), reverse=True):
        if only is None or info.name == only:
            held, unique = inv.held_by(info.root)
            rows.append(VersionSpace(info, held, unique, usage.last_used(info.root, roots[info.root], recorded),
                                     remotes))  # fmt: skip
    shown = {v.info.root for v in rows}
    stored = sum(inv.blob_bytes[b] for b in {b for r in shown for b in inv.blobs_by_root.get(r, ())})
    logical = sum(v.info.size if not v.info.partial else sum(f.size for f in files_here(v.info, inv.trees[v.info.root]))
                  for v in rows)  # fmt: skip
    return SpaceReport(rows, logical, stored, inv.distinct_chunk_bytes(shown), sum(snapshots.built(r) for r in shown),
                       leftover, disk_usage(objects.root))  # fmt: skip
