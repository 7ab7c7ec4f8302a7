"""Assembly: the part files one pull assembles, and the chunks they get from files already on this host.

A pull (``cas.sync.pull``) plans each missing file as a part file in
``tmp/pull/<root>``, keeping what an interrupted pull verified there; copies
the chunks local blobs hold (the chunk index) by the kernel, and those seed
folders hold (``cas.sync.seeds``), each of these checked against its id; leaves
the rest as ranges to fetch; and publishes the part files as blobs only
once each hashes to its file id.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..content.tree import FileEntry
from ..errors import CorruptObject
from ..local.cache import LocalCache, Progress
from ..repo.format import Location
from . import seeds as seeds_module
from .partfiles import FLUSH_MIN_BYTES, LOG_MIN_BYTES, Parts, new_part, read_done
from .pullplan import Range, Target, copy_runs, plan


def ranges_for(wanted: dict[bytes, list[Target]], raw_len: dict[bytes, int], locations: dict[bytes, Location],
               where: str) -> list[Range]:  # fmt: skip
    """The pack ranges holding the wanted chunks; a chunk the locator does not place is a CorruptObject."""
    for cid in wanted:
        if cid not in locations:
            raise CorruptObject(f"{where} does not say where chunk {cid.hex()} is")
    return plan(wanted, raw_len, locations)


class LocalCopyRefused(Exception):
    """A file assembled with bytes copied from local blobs failed its hash: a blob of this cache no longer
    holds what the chunk index says (changed through a hardlink, or damaged on disk)."""


class _Sources:
    """Local blobs open for copying, the last ``KEEP`` used; a blob gone since the chunk index named it is
    forgotten there (its chunks are fetched instead)."""

    KEEP = 16

    def __init__(self, cache: LocalCache):
        self.cache = cache
        self.fds: OrderedDict[tuple[bytes, bool], int] = OrderedDict()
        self.gone: set[tuple[bytes, bool]] = set()

    def open(self, blob: tuple[bytes, bool]) -> int | None:
        if blob in self.fds:
            self.fds.move_to_end(blob)
            return self.fds[blob]
        if blob in self.gone:
            return None
        try:
            fd = os.open(self.cache.objects.blob_path(*blob), os.O_RDONLY)
        except FileNotFoundError:
            self.cache.chunk_index().forget_file(blob[0])
            self.gone.add(blob)
            return None
        self.fds[blob] = fd
        if len(self.fds) > self.KEEP:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Assembly:
    """The part files one pull assembles: the tree entry each becomes, its chunks in order, and for every
    chunk still wanted, where its bytes go (a chunk verified by an interrupted pull is not wanted again)."""

    def __init__(self, work: Path, files: list[FileEntry]):
        self.work = work
        self.entries: dict[str, FileEntry] = {}  # part file: the tree entry it becomes
        self.layout: dict[str, list[tuple[int, int]]] = {}  # part file: its chunks (offset, length) in order
        self.wanted: dict[bytes, list[Target]] = defaultdict(list)
        self.raw_len: dict[bytes, int] = {}
        # Part files of one chunk: their whole-file hash is that chunk's id, verified as it is decoded.
        self.single: dict[str, bytes] = {}
        self.copied: set[str] = set()  # part files holding bytes copied from local blobs
        folder = str(work)
        present = set(os.listdir(folder))  # what an interrupted pull left: one listing, not a stat per file
        for f in files:
            name = f"{f.file_id.hex()}{'.x' if f.executable else ''}.part"
            part = os.path.join(folder, name)
            if part not in self.entries:  # the same file twice in one model is assembled once
                self._add(part, f, name in present)

    def _add(self, part: str, f: FileEntry, present: bool) -> None:
        self.entries[part] = f
        done = self._resumed(part, f.size) if present and f.size >= LOG_MIN_BYTES else None
        if done is None:  # a small file is fetched again whole: it keeps no log
            new_part(part, f.size, exists=present)
            done = set()
        offset, chunks = 0, self.layout.setdefault(part, [])
        chunk_list = list(f.chunk_list())
        if len(chunk_list) == 1 and 0 not in done:  # a chunk an earlier pull logged is hashed again from disk
            self.single[part] = chunk_list[0][0]
        for cid, length in chunk_list:
            if offset not in done:
                self.wanted[cid].append(Target(part, offset))
                self.raw_len[cid] = length
            chunks.append((offset, length))
            offset += length

    @staticmethod
    def _resumed(part: str, size: int) -> set[int] | None:
        """The offsets an interrupted pull verified in a large part file it left, or None to start it anew."""
        st = os.lstat(part)
        return read_done(part) if stat.S_ISREG(st.st_mode) and st.st_size == size else None

    def copy_local(self, cache: LocalCache, progress: Progress | None) -> int:
        """Copy every wanted chunk a local blob holds, no longer wanted; returns the bytes reused.  Nothing is
        hashed here: the part file's whole-file hash checks these bytes with the rest (``check``)."""
        runs = copy_runs(self.wanted, cache.chunk_index().find(list(self.wanted)))
        reused = 0
        parts, sources = Parts(), _Sources(cache)
        try:
            for run in runs:
                src = sources.open(run.blob)
                if src is None:
                    continue
                parts.copy(src, run.blob_offset, run.length, run.part, run.offset)
                for cid, target in run.chunks:
                    self.wanted[cid].remove(target)
                    if not self.wanted[cid]:
                        del self.wanted[cid]
                parts.mark([t for _, t in run.chunks])
                self.copied.add(run.part)
                self.single.pop(run.part, None)  # its bytes were not decoded here: the file is hashed
                reused += run.length
                if progress:
                    progress(run.length)
        finally:
            parts.close()
            sources.close()
        return reused

    def copy_seeds(self, dirs: Sequence[str], files: list[FileEntry], progress: Progress | None) -> int:
        """Copy every wanted chunk a file in the seed folders holds, each checked against its id as it is
        read (see ``seeds``); returns the bytes copied."""
        places = seeds_module.SeedIndex(dirs, files, set(self.wanted)).places
        parts = Parts()

        def write(cid: bytes, data: bytes) -> int:
            targets = self.wanted.pop(cid)
            parts.write(targets, data)
            parts.mark(targets)
            if progress:
                progress(len(data) * len(targets))
            return len(data) * len(targets)

        try:
            return seeds_module.copy(places, write)
        finally:
            parts.close()

    def large_parts(self) -> list[str]:
        """The part files worth flushing behind the download (``FLUSH_MIN_BYTES`` and more), largest first."""
        large = {t.part for t in self.targets() if self.entries[t.part].size >= FLUSH_MIN_BYTES}
        return sorted(large, key=lambda p: -self.entries[p].size)

    def targets(self) -> Iterator[Target]:
        return (t for targets in self.wanted.values() for t in targets)

    def ranges(self, locations: dict[bytes, Location], where: str) -> list[Range]:
        """The pack ranges to request for every chunk still wanted."""
        return ranges_for(self.wanted, self.raw_len, locations, where)

    def check(self, digests: dict[str, bytes], tag: str, url: str) -> None:
        """Every part file hashes to its file id, or the pull stores nothing: each bad part is discarded, and
        if bytes copied from local blobs may be why, ``LocalCopyRefused`` says to assemble it again."""
        bad = [part for part, f in self.entries.items() if digests[part] != f.file_id]
        for part in bad:
            Path(part).unlink()
            Path(part + ".done").unlink(missing_ok=True)
        if bad and all(part in self.copied for part in bad):
            raise LocalCopyRefused(self.entries[bad[0]].path)
        if bad:
            path = self.entries[next(p for p in bad if p not in self.copied)].path
            raise CorruptObject(f"{tag}: {path} assembled from verified chunks does not hash to its file id; "
                                "the partial file was discarded: pull again, and if this repeats the tree in "
                                f"{url} is inconsistent")  # fmt: skip

    def publish(self, cache: LocalCache) -> None:
        """Every part file becomes its blob, all flushed together in a durable cache (for many files one
        syncfs; a few large ones were mostly flushed behind the download already)."""
        todo = [(part, f.file_id, f.executable) for part, f in self.entries.items()]
        for part in cache.objects.store_blobs(todo, cache.durable):  # stored already: not needed
            os.unlink(part)
        for part, f in self.entries.items():
            if f.size >= LOG_MIN_BYTES:  # smaller part files keep no log
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part + ".done")
