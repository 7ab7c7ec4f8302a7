"""Checking a cache against its own hashes, and repairing what can be repaired here.

A snapshot file is a hardlink to its blob, so editing it (possible as root,
or after a chmod) edits the blob too: both are found by re-hashing.  A
damaged snapshot is rebuilt from good blobs; a damaged blob is removed, with
every snapshot sharing it, because serving it would be worse than a clear
"missing" error.  Orphans (objects no ref reaches, temporaries of dead
processes) are removed only on a whole-cache check.  The checker works on
the cache's parts (objects, refs, snapshots) through their public methods.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..content import tags
from ..content.digest import hash_file
from ..content.ref import ModelInfo, recency
from ..content.selection import Selection
from ..content.tree import FileEntry, Tree
from ..errors import CasError
from . import interrupted, leftovers
from .locks import Locks
from .objects import ObjectStore
from .refs import Refs
from .snapshots import Snapshots


class VerifyReport:
    """What ``Cache.verify`` found and what it repaired."""

    def __init__(self) -> None:
        self.checked = 0
        self.missing: list[str] = []
        self.tampered: list[str] = []
        self.orphaned: list[str] = []
        self.repaired: list[str] = []
        self.interrupted: list[str] = []  # part files interrupted pulls left for the next pull to resume

    def __repr__(self) -> str:
        return (
            f"VerifyReport(checked={self.checked}, missing={len(self.missing)}, tampered={len(self.tampered)}, "
            f"orphaned={len(self.orphaned)}, repaired={len(self.repaired)})"
        )

    @property
    def ok(self) -> bool:
        """True when nothing is left broken (orphans and repaired damage do not count)."""
        return not self.missing and not self.unrepaired

    @property
    def unrepaired(self) -> list[str]:
        return [t for t in self.tampered if t not in self.repaired]


class Verifier:
    """One check of a cache: its parts, what is known about each blob, and the report."""

    def __init__(self, objects: ObjectStore, refs: Refs, snapshots: Snapshots, locks: Locks, *, repair: bool):
        self.objects, self.refs, self.snapshots, self.locks = objects, refs, snapshots, locks
        self.repair = repair
        self.report = VerifyReport()
        self.blob_ok: dict[Path, bool] = {}  # blob: whether it hashes to its name

    def run(self, tag: str | None) -> VerifyReport:
        with self.locks.hold("objects"):  # exclusive: no ingest or pull publishes while blobs are judged
            infos = [self.refs.get(tags.parse(tag))] if tag is not None else self._all_refs()
            trees: dict[str, Tree] = {}
            for info in infos:
                tree = self._check_tree(info)
                if tree is not None:
                    trees[info.root] = tree
                    self._check_snapshot(info, tree, self._check_blobs(info, tree))
            if tag is None:
                self._check_latest_links(infos)
                self._check_orphans(trees)
                self._report_interrupted()
        return self.report

    def _all_refs(self) -> list[ModelInfo]:
        out = []
        for name, version, record in self.refs.records():
            if isinstance(record, CasError):
                self.report.tampered.append(f"ref {name}:{version} is unreadable ({record}); remove it with 'cas rm'")
            else:
                out.append(record)
        return out

    def _check_tree(self, info: ModelInfo) -> Tree | None:
        self.report.checked += 1
        try:
            return self.objects.load_tree(info.root)
        except CasError as e:
            self.report.missing.append(f"{info.tag}: tree {info.root} is missing or damaged ({e}); add or pull "
                                       "it again")  # fmt: skip
            return None

    def _blob_good(self, path: Path, file_id: bytes) -> bool:
        if path not in self.blob_ok:
            try:
                self.blob_ok[path] = hash_file(str(path)) == file_id
            except FileNotFoundError:
                self.blob_ok[path] = False
        return self.blob_ok[path]

    def _check_blobs(self, info: ModelInfo, tree: Tree) -> set[Path]:
        """The blobs of ``tree`` that are missing or damaged (a damaged one is removed when repairing)."""
        bad = set()
        for f in tree.files:
            blob = self.objects.blob_of(f)
            known = blob in self.blob_ok
            if info.partial and not blob.exists():
                continue  # not pulled here (a selection): nothing is missing
            if not blob.exists():
                self.blob_ok[blob] = False
                bad.add(blob)
                if not known:
                    self.report.missing.append(f"{info.tag}: blob {blob.name} ({f.path}) is missing; add or pull "
                                               "the model again")  # fmt: skip
            elif not self._blob_good(blob, f.file_id):
                bad.add(blob)
                if not known:
                    self.report.tampered.append(
                        f"{info.tag}: blob {blob.name} ({f.path}) does not match its id"
                        + ("; removed so it cannot be served, add or pull the model again" if self.repair else "")
                    )
                    if self.repair:
                        blob.unlink()
        return bad

    def _snapshot_problems(self, snap: Path, files: list[FileEntry], bad_blobs: set[Path]) -> list[str]:
        problems = []
        for f in files:
            p, blob = snap / f.path, self.objects.blob_of(f)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                problems.append(f"{f.path} is missing")
                continue
            try:
                same = os.path.samestat(st, os.stat(blob))
            except FileNotFoundError:
                same = False
            if same and self.blob_ok.get(blob):
                continue
            if blob in bad_blobs or hash_file(str(p)) != f.file_id:
                problems.append(f"{f.path} does not match its file id")
        expected = {f.path for f in files}
        for dirpath, _, names in os.walk(snap):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), snap).replace(os.sep, "/")
                if rel not in expected:
                    problems.append(f"{rel} is not part of the {'selection' if '.' in snap.name else 'model'}")
        return problems

    def _check_snapshot(self, info: ModelInfo, tree: Tree, bad_blobs: set[Path]) -> None:
        """The whole snapshot of ``info`` and each partial one, against the files each must hold."""
        for name in self.snapshots.names_of(info.root):
            _, _, key = name.partition(".")
            sel = self.snapshots.selection(key) if key else None
            try:
                files = sel.files(tree, info.tag) if sel else list(tree.files)
            except CasError:
                sel = None
            snap = self.snapshots.dir / name
            if key and sel is None:
                problems = ["its selection record is missing or damaged"]
            else:
                problems = self._snapshot_problems(snap, files, bad_blobs)
            if problems:
                self._repair_snapshot(info, name, files if not key or sel else [], sel, problems, bad_blobs)

    def _repair_snapshot(self, info: ModelInfo, name: str, files: list[FileEntry], sel: Selection | None,
                         problems: list[str], bad_blobs: set[Path]) -> None:  # fmt: skip
        msg = f"{info.tag}: snapshot {self.snapshots.dir / name}: " + "; ".join(problems[:5]) + (
            " ..." if len(problems) > 5 else "")  # fmt: skip
        self.report.tampered.append(msg)
        if not self.repair:
            return
        self.snapshots.discard(name)
        blobs = [self.objects.blob_of(f) for f in files]
        if files and not bad_blobs.intersection(blobs) and all(b.exists() for b in blobs):
            self.snapshots.build(info, files, sel)  # we hold the objects lock already
            self.report.repaired.append(msg)
        elif not files:  # a selection nobody can name again: rebuilt from its patterns on next use
            self.report.repaired.append(msg)

    def _check_latest_links(self, infos: list[ModelInfo]) -> None:
        """Each name's ``.latest`` hint must name its newest version (a crash can only leave it dangling)."""
        newest: dict[str, ModelInfo] = {}
        for info in infos:
            if info.name not in newest or recency(info) > recency(newest[info.name]):
                newest[info.name] = info
        for name, info in newest.items():
            target = self.refs.latest_link(name)
            if target != info.version:
                msg = f"{name}: latest link names {target!r}, the newest version is {info.version}"
                self.report.tampered.append(msg)
                if self.repair:
                    self.refs.repair_latest(name)
                    self.report.repaired.append(msg)

    def _check_orphans(self, trees: dict[str, Tree]) -> None:
        found = leftovers.find(self.objects, self.snapshots, trees, partial_pulls=False)
        for root in found.snapshots:
            self._orphan_snapshot(self.snapshots.path(root))
        for p in found.paths:
            self._remove_orphan(p)

    def _report_interrupted(self) -> None:
        """Part files of interrupted pulls are kept (the next pull of the model resumes), but said, with their
        size: they can fill a disk, and only gc (or a pull that runs out of space) frees them."""
        from .space import format_size

        for root, size in interrupted.held(self.objects).items():
            self.report.interrupted.append(f"{self.objects.pull_work / root}: {format_size(size)} of an interrupted "
                                           "pull, kept so the next pull of it resumes ('cas gc' frees it)")  # fmt: skip

    def _orphan_snapshot(self, p: Path) -> None:
        kept = not self.snapshots.remove(p.name) if self.repair else self.snapshots.in_use(p.name)
        if kept:
            self.report.orphaned.append(f"{p} (in use by a running process: kept)")
            return
        self.report.orphaned.append(str(p))
        if self.repair:
            self.report.repaired.append(f"removed orphan {p}")

    def _remove_orphan(self, p: Path) -> None:
        """Remove what no ref needs; in a shared cache, what only its owner can remove (a read-only snapshot
        another user's ``cas rm`` moved aside, see ``cas.system.dirs.remove_tree``) stays for the owner's verify."""
        if self.repair:
            try:
                leftovers.remove(p)
            except PermissionError:
                self.report.orphaned.append(f"{p} (another user's, in this shared cache: their cas verify removes it)")
                return
            self.report.repaired.append(f"removed orphan {p}")
        self.report.orphaned.append(str(p))
