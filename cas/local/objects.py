"""The object store of a cache: blobs (whole files, by file id) and trees (by root hash).

Both are immutable once published and named by their content, so writing
one that exists is a no-op and a reader never sees a partial object: every
write goes to a temporary name in ``tmp/`` and is linked into place.

    blobs/<ab>/<file id>      whole files, mode 0444 (``.x`` suffix: executable, 0555)
    trees/<ab>/<root>         tree manifests (msgpack)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import NotFound
from ..system.dirs import holding_dirs, make_dirs
from ..system.durable import fsync_all
from ..system.files import write_new

TYPE_CHECKING = False
if TYPE_CHECKING:  # cas.content.tree and cas.content.digest load blake3: imported where used, off a service's warm path
    from ..content.selection import Selection
    from ..content.tree import FileEntry, Tree

PULL_WORK = "pull"  # tmp/pull/<root>: the part files of pulls, kept across an interruption so the next one resumes


class ObjectStore:
    """Blobs and trees under one cache root."""

    def __init__(self, root: str):
        self._root = root  # a string: a cache is built on the warm path, where pathlib is slow

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def blobs_dir(self) -> str:
        """``blobs/`` as a plain string, for loops over many files."""
        return self._root + "/blobs"

    @property
    def tmp(self) -> Path:
        return Path(self._root, "tmp")

    @property
    def pull_work(self) -> Path:
        return Path(self._root, "tmp", PULL_WORK)

    def blob_path(self, file_id: bytes, executable: bool) -> Path:
        return Path(self._blob(file_id, executable)[1])

    def _blob(self, file_id: bytes, executable: bool) -> tuple[str, str]:
        """The folder and path of a blob, as strings (loops over thousands of files avoid pathlib)."""
        h = file_id.hex()
        folder = os.path.join(self._root, "blobs", h[:2])
        return folder, os.path.join(folder, h + ".x" if executable else h)

    def blob_of(self, entry: FileEntry) -> Path:
        """The blob holding one file of a tree."""
        return self.blob_path(entry.file_id, entry.executable)

    def has_blob(self, file_id: bytes, executable: bool) -> bool:
        return os.path.exists(self._blob(file_id, executable)[1])

    def require_blobs(self, tag: str, files: list[FileEntry], sel: Selection | None) -> None:
        """NotFound naming what to pull unless every one of ``files`` (of a partial version) has its blob here."""
        absent = [f.path for f in files if not self.has_blob(f.file_id, f.executable)]
        if absent:
            options = f" {sel.describe()}" if sel is not None else ""
            raise NotFound(f"{tag} is partial in the cache at {self._root}: {len(absent)} of the files asked for "
                           f"are not here ({', '.join(map(repr, absent[:3]))}{', ...' if len(absent) > 3 else ''}); "
                           f"pull them with 'cas pull {tag}{options}'")  # fmt: skip

    def store_blobs(self, files: list[tuple[str, bytes, bool]], durable: bool) -> list[str]:
        """Move finished files (path, file id, executable) into place as blobs, several at once: with
        ``durable``, the bytes of those still missing are flushed first (one ``syncfs`` for many files),
        then named, then the names flushed together with the folders made for them (``blobs/<ab>/`` in
        ``blobs/``), so no blob is ever visible before its bytes are on disk, nor lost after its tree is
        written.  Returns the files whose blob existed already, left for the caller to remove."""
        todo, stored = [], []
        for src, file_id, executable in files:
            folder, dest = self._blob(file_id, executable)
            if os.path.exists(dest):
                stored.append(src)
            else:
                todo.append((src, folder, dest, executable))
        if durable:
            fsync_all([t[0] for t in todo], [])
        folders: set[str] = set()
        made: list[str] = []
        for src, folder, dest, executable in todo:
            if folder not in folders:
                made += make_dirs(folder)
                folders.add(folder)
            os.chmod(src, 0o555 if executable else 0o444)
            try:
                os.link(src, dest)
            except FileExistsError:  # the same file twice in one model, or another writer got there first
                pass
            os.unlink(src)
        if durable and folders:
            fsync_all([], sorted(folders.union(holding_dirs(made))))
        return stored

    def tree_path(self, root: str) -> Path:
        return self.root / "trees" / root[:2] / root

    def load_tree(self, root: str) -> Tree:
        """A stored tree, checked against its root (validated when it was stored); NotFound when it is missing."""
        try:
            data = self.tree_path(root).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"tree {root} is missing from {self.root}") from None
        from ..content.tree import decode_stored

        return decode_stored(data, root)

    def store_tree(self, root: str, encoded: bytes) -> None:
        path = self.tree_path(root)
        if not path.exists():
            write_new(path, encoded, self.tmp)

    def blobs_of(self, tree: Tree) -> set[Path]:
        return {self.blob_of(f) for f in tree.files}

    def blob_files(self) -> Iterator[Path]:
        """Every blob file on disk, named or not by a tree (for verify)."""
        return _files_under(self.root / "blobs")

    def tree_files(self) -> Iterator[Path]:
        return _files_under(self.root / "trees")


def _files_under(d: Path) -> Iterator[Path]:
    for dirpath, _, names in sorted(os.walk(d)):
        for n in sorted(names):
            yield Path(dirpath, n)
