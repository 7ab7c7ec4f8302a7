"""Checking a cache against its own hashes, and repairing what can be repaired here.

A snapshot file is a hardlink to its blob, so editing it (possible as root,
or after a chmod) edits the blob too: both are found by re-hashing.  A
damaged snapshot is rebuilt from good blobs; a damaged blob is removed, with
every snapshot sharing it, because serving it would be worse than a clear
"missing" error.  Orphans (objects no ref reaches, temporaries of dead
processes) are removed only on a whole-cache check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import leases
from . import ref as refs
from .digest import hash_file
from .errors import CasError
from .fsutil import TRASH, pid_alive, pid_of_temp, remove_tree
from .ref import ModelInfo
from .tree import Tree

if TYPE_CHECKING:
    from .cache import Cache


class VerifyReport:
    """What ``Cache.verify`` found and what it repaired."""

    def __init__(self) -> None:
        self.checked = 0
        self.missing: list[str] = []
        self.tampered: list[str] = []
        self.orphaned: list[str] = []
        self.repaired: list[str] = []

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


def verify_cache(cache: Cache, tag: str | None, *, repair: bool) -> VerifyReport:
    report = VerifyReport()
    with cache._objects_lock(shared=False):
        infos = [cache.get(tag)] if tag is not None else _all_refs(cache, report)
        blob_ok: dict[Path, bool] = {}
        trees: dict[str, Tree] = {}
        for info in infos:
            tree = _check_tree(cache, info, report)
            if tree is None:
                continue
            trees[info.root] = tree
            bad_blobs = _check_blobs(cache, info, tree, blob_ok, report, repair)
            _check_snapshot(cache, info, tree, blob_ok, bad_blobs, report, repair)
        if tag is None:
            _check_latest_links(cache, infos, report, repair)
            _check_orphans(cache, trees, report, repair)
    return report


def _all_refs(cache: Cache, report: VerifyReport) -> list[ModelInfo]:
    out = []
    refs_dir = cache.root / "refs"
    for name in sorted(os.listdir(refs_dir)) if refs_dir.is_dir() else []:
        for version in sorted(os.listdir(refs_dir / name)):
            if version.startswith("."):
                continue
            try:
                out.append(refs.decode((refs_dir / name / version).read_bytes(), name=name, version=version))
            except CasError as e:
                report.tampered.append(f"ref {name}:{version} is unreadable ({e}); remove it with 'cas rm'")
    return out


def _check_tree(cache: Cache, info: ModelInfo, report: VerifyReport) -> Tree | None:
    report.checked += 1
    try:
        return cache._load_tree(info.root)
    except CasError as e:
        report.missing.append(f"{info.tag}: tree {info.root} is missing or damaged ({e}); add or pull it again")
        return None


def _blob_good(path: Path, file_id: bytes, memo: dict[Path, bool]) -> bool:
    if path not in memo:
        try:
            memo[path] = hash_file(str(path)) == file_id
        except FileNotFoundError:
            memo[path] = False
    return memo[path]


def _check_blobs(
    cache: Cache, info: ModelInfo, tree: Tree, memo: dict[Path, bool], report: VerifyReport, repair: bool
) -> set[Path]:
    bad = set()
    for f in tree.files:
        blob = cache._blob_path(f.file_id, f.executable)
        known = blob in memo
        if not blob.exists():
            memo[blob] = False
            bad.add(blob)
            if not known:
                report.missing.append(
                    f"{info.tag}: blob {blob.name} ({f.path}) is missing; add or pull the model again"
                )
        elif not _blob_good(blob, f.file_id, memo):
            bad.add(blob)
            if not known:
                report.tampered.append(
                    f"{info.tag}: blob {blob.name} ({f.path}) does not match its id"
                    + ("; removed so it cannot be served, add or pull the model again" if repair else "")
                )
                if repair:
                    blob.unlink()
    return bad


def _check_snapshot(
    cache: Cache,
    info: ModelInfo,
    tree: Tree,
    memo: dict[Path, bool],
    bad_blobs: set[Path],
    report: VerifyReport,
    repair: bool,
) -> None:
    snap = cache.snapshot_path(info.root)
    if not snap.is_dir():
        return
    problems = []
    expected = set()
    for f in tree.files:
        expected.add(f.path)
        p = snap / f.path
        blob = cache._blob_path(f.file_id, f.executable)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            problems.append(f"{f.path} is missing")
            continue
        try:
            same = os.path.samestat(st, os.stat(blob))
        except FileNotFoundError:
            same = False
        if same and memo.get(blob):
            continue
        if blob in bad_blobs or hash_file(str(p)) != f.file_id:
            problems.append(f"{f.path} does not match its file id")
    for dirpath, _, files in os.walk(snap):
        for n in files:
            rel = os.path.relpath(os.path.join(dirpath, n), snap).replace(os.sep, "/")
            if rel not in expected:
                problems.append(f"{rel} is not part of the model")
    if not problems:
        return
    msg = f"{info.tag}: snapshot {snap}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
    report.tampered.append(msg)
    if not repair:
        return
    remove_tree(snap)
    if bad_blobs:
        return  # the snapshot is gone so the damage cannot be served; the model needs its blobs again
    cache._build_snapshot(info, snap)  # we hold the objects lock already
    report.repaired.append(msg)


def _check_latest_links(cache: Cache, infos: list[ModelInfo], report: VerifyReport, repair: bool) -> None:
    """Each name's ``.latest`` hint must name its newest version (a crash can only leave it dangling)."""
    from .cache import LATEST_LINK, _recency

    newest: dict[str, ModelInfo] = {}
    for info in infos:
        if info.name not in newest or _recency(info) > _recency(newest[info.name]):
            newest[info.name] = info
    for name, info in newest.items():
        link = cache.root / "refs" / name / LATEST_LINK
        target = os.readlink(link) if link.is_symlink() else None
        if target != info.version:
            msg = f"{name}: latest link names {target!r}, the newest version is {info.version}"
            report.tampered.append(msg)
            if repair:
                with cache._lock(f"ref-{name}"):
                    cache._point_latest(name, cache._newest(name))
                report.repaired.append(msg)


def _check_orphans(cache: Cache, trees: dict[str, Tree], report: VerifyReport, repair: bool) -> None:
    live_blobs = {cache._blob_path(f.file_id, f.executable) for t in trees.values() for f in t.files}
    found: list[Path] = []
    for p in _files_under(cache.root / "trees"):
        if p.name not in trees:
            found.append(p)
    for p in _files_under(cache.root / "blobs"):
        if p not in live_blobs:
            found.append(p)
    snaps = cache.root / "snapshots"
    for p in sorted(snaps.iterdir()) if snaps.is_dir() else []:
        if p.name.startswith(".tmp-"):
            if not _owner_alive(p.name[len(".tmp-") :]):
                found.append(p)
        elif p.name.startswith(TRASH):
            found.append(p)
        elif p.name not in trees:
            with leases.unused(str(cache.root / "locks"), p.name) as free:
                if not free:
                    report.orphaned.append(f"{p} (in use by a running process: kept)")
                    continue
                report.orphaned.append(str(p))
                if repair:  # while no process can take a lease on it
                    remove_tree(p)
                    report.repaired.append(f"removed orphan {p}")
    tmp = cache.root / "tmp"
    for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if not _owner_alive(p.name):
            found.append(p)
    for p in found:
        _remove_orphan(p, report, repair)


def _remove_orphan(p: Path, report: VerifyReport, repair: bool) -> None:
    """Remove what no ref needs; in a shared cache, what only its owner can remove (a read-only snapshot
    another user's ``cas rm`` moved aside, see ``fsutil.remove_tree``) stays for the owner's verify."""
    if repair:
        try:
            remove_tree(p, move_aside=False) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        except PermissionError:
            report.orphaned.append(f"{p} (another user's, in this shared cache: their cas verify removes it)")
            return
        report.repaired.append(f"removed orphan {p}")
    report.orphaned.append(str(p))


def _owner_alive(temp: str) -> bool:
    pid = pid_of_temp(temp)
    return pid is not None and pid_alive(pid)


def _files_under(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(Path(dp) / n for dp, _, names in os.walk(d) for n in names)
