"""What no ref needs: orphaned trees, blobs and snapshots, and what dead processes left behind.

``cas verify`` and ``cas gc`` find them the same way, holding the objects
lock exclusively so that no add or pull is writing.  They differ on one
thing: the part files of an interrupted pull (``tmp/pull``) let the next
pull resume, so verify keeps them and only gc, whose job is to free space,
removes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from ..content.tree import Tree
from ..errors import CasError
from ..system.dirs import TRASH, remove_tree
from . import owners
from .objects import PULL_WORK, ObjectStore
from .snapshots import STAGING, Snapshots


class Leftovers(NamedTuple):
    paths: list[Path]  # removable now: no ref needs them and no living process writes them
    snapshots: list[str]  # roots whose snapshots no ref names: removable once no process leases them


def find(objects: ObjectStore, snapshots: Snapshots, live: Mapping[str, Tree], *, partial_pulls: bool) -> Leftovers:
    """The leftovers of a cache whose live trees (by root) are ``live``; with ``partial_pulls`` also the
    part files of interrupted pulls."""
    lock_dir = str(objects.root / "locks")
    live_blobs = {objects.blob_of(f) for t in live.values() for f in t.files}
    paths = [p for p in objects.tree_files() if p.name not in live]
    paths += [p for p in objects.blob_files() if p not in live_blobs]
    orphans: list[str] = []
    named: set[str] = set()  # the selections partial snapshots name
    for p in snapshots.entries():
        root, _, key = p.name.partition(".")
        if p.name.startswith(STAGING):
            if not owners.alive(lock_dir, p.name):
                paths.append(p)
        elif p.name.startswith(TRASH):
            paths.append(p)
        elif root not in live:
            orphans += [] if root in orphans else [root]
        elif key:
            named.add(key)
    paths += [p for p in snapshots.selection_files() if p.name not in named and not p.name.startswith(".")]
    tmp = objects.tmp
    for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if (p.name == PULL_WORK and partial_pulls) or (p.name != PULL_WORK and not owners.alive(lock_dir, p.name)):
            paths.append(p)
    return Leftovers(paths, orphans)


def remove(path: Path) -> None:
    """Remove one leftover; PermissionError for what only its owner can remove in a shared cache (a
    read-only snapshot another user's ``cas rm`` moved aside, see ``cas.system.dirs.remove_tree``)."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path, move_aside=False)
    else:
        path.unlink(missing_ok=True)


def remove_unused(objects: ObjectStore, snapshots: Snapshots, live: set[str], candidates: set[str]) -> None:
    """Remove the trees, snapshots and blobs of the roots in ``candidates`` that no live root still uses (a
    snapshot in use stays for a later verify; its hardlinks keep its bytes)."""
    dead = candidates - live
    keep: set[Path] = set()
    for root in live if dead else ():
        with contextlib.suppress(CasError):
            keep |= objects.blobs_of(objects.load_tree(root))
    for root in dead:
        snapshots.remove(root)
        with contextlib.suppress(CasError):
            for blob in objects.blobs_of(objects.load_tree(root)) - keep:
                blob.unlink(missing_ok=True)
        objects.tree_path(root).unlink(missing_ok=True)
