"""Snapshots: a model's files as a read-only directory of hardlinks to its blobs, and the leases on them.

    snapshots/<root>/         the files of every model whose tree has that root; directories 0555
    snapshots/<root>.<key>/   the files of that tree a selection takes (``cas.content.selection``)
    selections/<key>          the patterns of that selection, so verify knows what the snapshot must hold

A snapshot is built under a temporary name inside ``snapshots/`` and renamed
into place when complete: its presence is its completion marker, so the
warm path is one ``stat`` and a model directory holds nothing but the
model's files.  A process using a snapshot holds a lease on its root (see
``leases``), and removal leaves the leased root's snapshots in place.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..content.ref import ModelInfo
from ..errors import CasError, CorruptObject
from ..system.dirs import TRASH, make_dirs, remove_tree
from ..system.durable import fsync_dir
from ..system.files import copy_instead
from ..system.names import temp_name
from . import leases
from .objects import ObjectStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..content.selection import Selection
    from ..content.tree import FileEntry

PARALLEL_LINKS = 2000  # files from which a snapshot is linked by two threads
STAGING = ".tmp-"  # a snapshot being built; followed by the builder's temp name (its pid)


def _threads_can_start() -> bool:
    """False once the interpreter is exiting (a model materialized from an ``atexit`` handler)."""
    import threading

    return threading.main_thread().is_alive()


class Snapshots:
    def __init__(self, cache_root: str, objects: ObjectStore):
        self._dir = cache_root + "/snapshots"  # plain strings: the warm path avoids pathlib
        self._selections = cache_root + "/selections"
        self._tmp = cache_root + "/tmp"
        self._locks = cache_root + "/locks"
        self._objects = objects

    @property
    def dir(self) -> Path:
        return Path(self._dir)

    def path(self, root: str, key: str | None = None) -> Path:
        """Where the snapshot of a tree (or of the selection named ``key``) lives once built."""
        return Path(f"{self._dir}/{root}.{key}" if key else f"{self._dir}/{root}")

    def built(self, root: str, key: str | None = None) -> bool:
        """Whether the snapshot is there (one ``stat`` on a plain string: the warm path)."""
        return os.path.isdir(f"{self._dir}/{root}.{key}" if key else f"{self._dir}/{root}")

    def names_of(self, root: str) -> list[str]:
        """The snapshots of ``root`` that are built: the whole one and each selection's."""
        try:
            return sorted(n for n in os.listdir(self._dir) if n == root or n.startswith(root + "."))
        except FileNotFoundError:
            return []

    def selection(self, key: str) -> Selection | None:
        """The selection a partial snapshot was built for, or None if its record is gone or damaged."""
        from ..content.selection import Selection

        try:
            with open(f"{self._selections}/{key}", "rb") as f:
                sel = Selection.decode(f.read(1 << 22))
        except (OSError, CasError):
            return None
        return sel if sel.key == key else None

    def selection_files(self) -> list[Path]:
        """Every selection record (gc removes those no snapshot names)."""
        d = Path(self._selections)
        return sorted(d.iterdir()) if d.is_dir() else []

    def _record(self, sel: Selection) -> None:
        from ..system.files import atomic_write

        path = Path(self._selections, sel.key)
        if not path.exists():
            make_dirs(self._selections)
            atomic_write(path, sel.encode(), Path(self._tmp), durable=False)  # lost in a crash: verify rebuilds

    def lease(self, root: str) -> None:
        """Keep removals from deleting this snapshot while this process lives."""
        leases.hold(self._locks, root)

    def build(self, info: ModelInfo, files: list[FileEntry], sel: Selection | None = None) -> None:
        """Build the snapshot of ``files`` (the tree's, or those ``sel`` takes) from their blobs; a snapshot
        another process finished first stands."""
        snap = os.fspath(self.path(info.root, sel.key if sel else None))
        stage = f"{self._dir}/{temp_name(STAGING)}"
        if sel is not None:
            self._record(sel)  # before the snapshot: verify finds no snapshot without its record
        make_dirs(stage)
        try:
            self._fill(info, files, stage)
            os.rename(stage, snap)
        except OSError as e:
            remove_tree(Path(stage))
            if os.path.isdir(snap):  # another process without our lock won the race
                return
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # the caller says "not writable", naming the cache
            raise CasError(f"could not materialize {info.tag} in {self.dir}: {e}") from e
        except BaseException:
            remove_tree(Path(stage))
            raise
        fsync_dir(self._dir)

    def _fill(self, info: ModelInfo, files: list[FileEntry], stage: str) -> None:
        """Link every file of ``files`` into ``stage``, then make its directories read-only.

        Per file, one ``link`` on plain strings and nothing else (a model can hold tens of thousands of small
        files): each directory is made once, in tree order, the blob's presence is learnt from the link
        itself, and the directories are made read-only in one pass at the end.  A large tree is linked by
        two threads, each over one half of the (sorted) paths: ``link`` waits on the kernel without the GIL,
        and the halves mostly fill different directories, so they rarely wait on one directory's lock."""
        blobs = self._objects.blobs_dir
        made = {""}
        dirs = [stage]
        pairs = []
        for f in files:
            h = f.file_id.hex()
            parent = f.path.rpartition("/")[0]
            if parent not in made:
                self._make_parents(stage, parent, made, dirs)
            src = f"{blobs}/{h[:2]}/{h}.x" if f.executable else f"{blobs}/{h[:2]}/{h}"
            pairs.append((src, f"{stage}/{f.path}", f.path))
        if len(pairs) >= PARALLEL_LINKS and (os.cpu_count() or 1) > 1 and _threads_can_start():
            self._link_halves(info, pairs)
        else:
            self._link_all(info, pairs)
        for d in reversed(dirs):  # deepest first
            os.chmod(d, 0o555)

    def _link_halves(self, info: ModelInfo, pairs: list[tuple[str, str, str]]) -> None:
        """Link the second half on a thread of its own while this one links the first (a plain thread: a
        pool's import costs a fresh ``cas materialize`` process 6 ms); the first failure is raised."""
        import threading

        half = len(pairs) // 2
        failed: list[BaseException] = []

        def second() -> None:
            try:
                self._link_all(info, pairs[half:])
            except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
                failed.append(e)

        other = threading.Thread(target=second, name="cas-link", daemon=True)
        other.start()
        try:
            self._link_all(info, pairs[:half])
        finally:
            other.join()
        if failed:
            raise failed[0]

    def _link_all(self, info: ModelInfo, pairs: list[tuple[str, str, str]]) -> None:
        """Hardlink each blob at its place in the stage (blob, destination, path in the tree)."""
        for src, dst, path in pairs:
            try:
                os.link(src, dst)
            except FileNotFoundError:
                if os.path.exists(src):
                    raise
                raise CorruptObject(
                    f"{info.tag}: blob {os.path.basename(src)} for {path!r} is missing from {self._objects.root}; "
                    f"run 'cas verify' and add or pull {info.tag} again"
                ) from None
            except OSError as e:  # another filesystem, another user's blob: copied, with one warning per reason
                copy_instead(src, dst, e)

    @staticmethod
    def _make_parents(stage: str, parent: str, made: set[str], dirs: list[str]) -> None:
        """Make ``stage/parent`` and its missing ancestors, recording each in ``made`` and ``dirs``."""
        missing = []
        while parent not in made:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        for d in reversed(missing):
            os.mkdir(f"{stage}/{d}")
            made.add(d)
            dirs.append(f"{stage}/{d}")

    def remove(self, root: str, *, mine_count: bool = False) -> bool:
        """Remove the snapshots of a root (whole and partial) unless a process has leased it; False when one has
        (their hardlinks keep the bytes).  This process's own lease stops it only with ``mine_count`` (gc: a
        service's gc keeps its own models)."""
        with leases.unused(self._locks, root, mine_count=mine_count) as free:
            if free:  # while no process can take a lease on it
                for name in self.names_of(root):
                    self.discard(name)
            return free

    def discard(self, name: str) -> None:
        """Remove one snapshot (``root`` or ``root.key``) whatever uses it: first renamed aside, one atomic step
        after which no reader can take it for built, then deleted; a removal killed half way leaves a
        ``.trash-`` folder for gc and verify, never a snapshot that lacks files."""
        trash = f"{self._dir}/{temp_name(TRASH)}"
        try:
            os.rename(f"{self._dir}/{name}", trash)
        except FileNotFoundError:
            return
        remove_tree(Path(trash))

    def in_use(self, root: str) -> bool:
        """Whether a process, this one included, holds a lease on ``root`` (changes nothing)."""
        return leases.held(self._locks, root)

    def first_use(self, root: str) -> float | None:
        """When a process first leased ``root`` since a removal or gc last found it free."""
        return leases.first_use(self._locks, root)

    def reset_first_use(self, root: str) -> None:
        """Remove the lease file of ``root`` unless a process (this one included) holds it, so the next
        first use creates it anew (gc, after recording when it was first used)."""
        with leases.unused(self._locks, root, mine_count=True):
            pass

    def built_at(self, root: str) -> float | None:
        try:
            return os.stat(f"{self._dir}/{root}").st_mtime
        except FileNotFoundError:
            return None

    def entries(self) -> list[Path]:
        """Everything in ``snapshots/``: built snapshots, staging folders, trash (for verify)."""
        return sorted(self.dir.iterdir()) if self.dir.is_dir() else []
