"""Seeds: chunks a pull takes from files already on this host, outside the cache (casync's ``--seed``).

A host often holds a model's previous version somewhere else: a checkout, a
Hugging Face cache, a BentoML store, an NFS mount.  A pull given seed folders
(``--seed DIR``, ``$CAS_SEEDS``) chunks the files there whose name or size
make them likely sources (``candidates``), with the chunker ``add`` uses, and
notes where each chunk it still wants lies (``SeedIndex``).  Copying
re-reads each chunk and checks it against its id before writing it
anywhere: a seed file that changed since it was chunked gives a chunk that
fails, which is then fetched from the repository instead.  Seeds are only
read, never written, and never trusted.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from ..content.digest import chunk_id
from ..content.tree import CHUNK_RECORD, FileEntry
from ..errors import InvalidInput

MAX_ENTRIES = 200_000  # directory entries looked at in all seed folders: a seed at / must not take an hour
MAX_PER_FILE = 3  # candidates chunked per wanted file, the likeliest first
SIZE_RATIO = 2.0  # a file of the same suffix counts when its size is within this factor of a wanted file's


class Place(NamedTuple):
    """Where a chunk lies in a seed file."""

    path: str
    offset: int
    length: int


def from_env() -> list[str]:
    """The seed folders ``$CAS_SEEDS`` names (separated by ``os.pathsep``, as ``PATH`` is)."""
    return [p for p in os.environ.get("CAS_SEEDS", "").split(os.pathsep) if p.strip()]


def check_dirs(dirs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The seed folders as absolute paths; one that is not a folder is an error saying which."""
    out = []
    for d in dirs:
        path = os.path.abspath(os.path.expanduser(os.fspath(d)))
        if not os.path.isdir(path):
            raise InvalidInput(f"seed {d!s} is not a folder; give --seed (or $CAS_SEEDS) folders that hold "
                               "files of an earlier version")  # fmt: skip
        out.append(path)
    return out


def candidates(dirs: Sequence[str], wanted: Sequence[FileEntry]) -> list[str]:
    """The files under ``dirs`` worth chunking for ``wanted``, likeliest first: the same path in the model,
    then the same name, then the same suffix and a size within ``SIZE_RATIO``; each real file once."""
    scored: dict[tuple[int, int], tuple[int, str]] = {}  # (dev, ino): (score, path)
    likely = _Likely(wanted)
    for root, rel, st in _walk(dirs):
        score = likely.score(rel, st.st_size)
        key = (st.st_dev, st.st_ino)
        if score is not None and (key not in scored or score < scored[key][0]):
            scored[key] = (score, os.path.join(root, rel))
    ranked = sorted(scored.values())
    return [path for _, path in ranked[: MAX_PER_FILE * max(1, len(wanted))]]


class _Likely:
    """What makes a file a likely source of the wanted files, indexed (a seed may hold 100,000 files)."""

    def __init__(self, wanted: Sequence[FileEntry]):
        self.by_path = {f.path: f.size for f in wanted}
        self.names = {os.path.basename(f.path) for f in wanted}
        self.sizes: dict[str, list[int]] = {}
        for f in wanted:
            suffix = os.path.splitext(f.path)[1]
            if suffix:
                self.sizes.setdefault(suffix, []).append(f.size)
        for sizes in self.sizes.values():
            sizes.sort()

    def score(self, rel: str, size: int) -> int | None:
        """0: the same path and size; 1: the same path; 2: the same name; 3: the same suffix, a near size."""
        if rel in self.by_path:
            return 0 if self.by_path[rel] == size else 1
        if os.path.basename(rel) in self.names:
            return 2
        sizes = self.sizes.get(os.path.splitext(rel)[1])
        if sizes:
            i = bisect.bisect_left(sizes, size / SIZE_RATIO)
            if i < len(sizes) and sizes[i] <= size * SIZE_RATIO:
                return 3
        return None


def _walk(dirs: Sequence[str]) -> Iterable[tuple[str, str, os.stat_result]]:
    """(seed folder, path in it, stat) of each regular file, a linked file followed, a linked folder not."""
    seen = 0
    for top in dirs:
        for here, folders, names in os.walk(top):
            folders[:] = [d for d in folders if not d.startswith(".")]
            for n in names:
                seen += 1
                if seen > MAX_ENTRIES:
                    return
                path = os.path.join(here, n)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                    yield top, os.path.relpath(path, top).replace(os.sep, "/"), st


class SeedIndex:
    """Where the wanted chunks lie in seed files, found by chunking the likeliest ones."""

    def __init__(self, dirs: Sequence[str], wanted_files: Sequence[FileEntry], wanted: set[bytes]):
        self.places: dict[bytes, Place] = {}
        for path in candidates(dirs, wanted_files):
            if len(self.places) == len(wanted):
                break
            self._chunk(path, wanted)

    def _chunk(self, path: str, wanted: set[bytes]) -> None:
        from ..local.ingest import digest_file

        try:
            digested = digest_file(os.path.realpath(path))
        except (OSError, InvalidInput):
            return  # unreadable, or changed while read: not a seed
        offset = 0
        for cid, length in CHUNK_RECORD.iter_unpack(digested.chunks):
            if cid in wanted and cid not in self.places:
                self.places[cid] = Place(path, offset, length)
            offset += length


def copy(places: dict[bytes, Place], write: Callable[[bytes, bytes], int]) -> int:
    """Read each chunk from its seed file and hand it to ``write(chunk id, bytes)`` only if it hashes to its id;
    returns the sum of what ``write`` returned (the bytes it wrote).  A chunk that fails (the file changed) is
    left for the repository."""
    copied = 0
    by_file: dict[str, list[tuple[int, int, bytes]]] = {}
    for cid, p in places.items():
        by_file.setdefault(p.path, []).append((p.offset, p.length, cid))
    for path, chunks in by_file.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for offset, length, cid in sorted(chunks):
                data = os.pread(fd, length, offset)
                if len(data) == length and chunk_id(data) == cid:
                    copied += write(cid, data)
        finally:
            os.close(fd)
    return copied
