"""The part files of interrupted pulls (``tmp/pull/<root>``): what they hold, and freeing them on a full disk.

An interrupted pull keeps what it verified so the next pull of that model
resumes, which is worth it while the disk has room.  On a full disk it is
not: a pull that runs out of space removes its own part files and those of
every other interrupted pull no process is running (its ``pull-<root>`` lock
is free), so the cache is never left wedged at 100% with nothing but
``cas gc`` to free it.  ``cas verify`` reports them and their size.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CacheBusy
from ..system.dirs import remove_tree
from .locks import Locks
from .objects import ObjectStore
from .space import disk_usage


def held(objects: ObjectStore) -> dict[str, int]:
    """Bytes on disk of each interrupted (or running) pull's part files, by root."""
    work = objects.pull_work
    return {p.name: disk_usage(p) for p in sorted(work.iterdir())} if work.is_dir() else {}


def free(objects: ObjectStore, locks: Locks, mine: Path | None = None) -> int:
    """Remove ``mine`` (the failing pull's own folder) and the folders of pulls no process runs; returns the
    bytes freed."""
    freed = 0
    if mine is not None:
        freed += disk_usage(mine)
        remove_tree(mine)
    for root in held(objects):
        try:
            with locks.hold(f"pull-{root}", timeout=0):
                folder = objects.pull_work / root
                freed += disk_usage(folder)
                remove_tree(folder)
        except CacheBusy:
            continue  # a pull under way, in this process or another: its files are in use
    return freed
