"""Storing a model: its files hashed and chunked into blobs, then the tree and ref that make it a version.

``LocalCache.add`` copies a user's folder in (later edits to it never reach
the cache); ``LocalCache.create`` moves in what was written to a staging
folder inside the cache.  Either way every file is hashed and chunked in one
pass, all the blobs are published at once (their bytes flushed together,
then their names), and the ref is written last: it is the commit point.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..content import ref, tags
from ..content.ref import ModelInfo
from ..errors import InvalidInput
from ..system.dirs import make_dirs
from ..system.names import temp_name
from .objects import ObjectStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..content.tree import FileEntry, Tree
    from .sources import Source


class Staging:
    """A directory inside the cache to write a new model into (see ``LocalCache.create``)."""

    def __init__(self, path: Path, tag: str):
        self.path = path
        self.tag = tag

    def __repr__(self) -> str:
        return f"Staging(tag={self.tag!r}, path={str(self.path)!r})"


def new_tag(tag: str) -> tuple[str, str]:
    """The name and version a new model is stored under: a fresh, time-sortable version when none is given."""
    name, version = tags.split(tag)
    if version is None:
        return name, tags.new_version()
    return name, tags.validate_version(version, whole=tag)


def check_created(created: float) -> float:
    if not ref.valid_time(created):
        raise InvalidInput(f"created={created!r}: give seconds since the epoch, as time.time() does")
    return float(created)


def ingest(objects: ObjectStore, sources: list[Source], progress: Callable[[int], None] | None, *, move: bool,
           durable: bool) -> list[FileEntry]:  # fmt: skip
    """Hash and chunk every file (copying it to ``tmp/`` unless ``move`` and it is the staging folder's own,
    see ``Source.movable``: a link's target is the user's, never moved or chmod-ed), then publish them all
    as blobs at once: their bytes flushed together (one syncfs for many files, not an fsync each),
    then their names.  Nothing is visible under a blob's name before its bytes are durable."""
    from ..content.tree import FileEntry
    from .ingest import digest_file

    tmp_dir = os.fspath(objects.tmp)
    make_dirs(tmp_dir)
    done: list[tuple[str, bytes, bool]] = []
    copies: list[str] = []

    def one(s: Source) -> FileEntry:
        copy = not (move and s.movable)
        if copy:
            tmp = os.path.join(tmp_dir, temp_name("blob-"))
            copies.append(tmp)
            d = digest_file(s.src, copy_to=tmp, progress=progress, durable=durable)
        else:
            d = digest_file(s.src, durable=durable)
        if copy and objects.has_blob(d.file_id, s.executable):
            os.unlink(tmp)  # stored already: the copy goes now, not after the whole model
        else:
            done.append((tmp if copy else s.src, d.file_id, s.executable))
        return FileEntry(s.path, d.size, s.executable, d.file_id, d.chunks)

    try:
        entries = [one(s) for s in sources]
        objects.store_blobs(done, durable)
    finally:
        for tmp in copies:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return entries


def version_of(name: str, version: str, entries: list[FileEntry], labels: dict[str, str],
               metadata: dict[str, object], created: float | None = None) -> tuple[ModelInfo, Tree, bytes]:  # fmt: skip
    """The ref, tree and encoded tree of a new version made of ``entries`` (to ``LocalCache.commit``)."""
    from ..content.tree import Tree, root_of

    tree = Tree.build(entries)
    encoded = tree.encode()
    when = time.time() if created is None else created
    info = ModelInfo(name=name, version=version, root=root_of(encoded), created=when, size=tree.size,
                     file_count=len(tree.files), labels=labels, metadata=metadata)  # fmt: skip
    return info, tree, encoded
