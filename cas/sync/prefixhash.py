"""Whole-file hashes of files being assembled, taken while they fill.

A pulled file becomes a blob only if all of it hashes to its file id: the
chunk ids prove each chunk, only the whole-file hash proves the tree named
the file truthfully.  Taken after the download it re-reads every byte at
the end (0.3 s per GB here); taken along the way it overlaps the download.
``PrefixHasher`` follows each part file's completed prefix (every chunk
before it written) and hashes it from the page cache on a thread of its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from ..content.digest import file_hasher

STEP = 8 << 20  # hash a file's new prefix once this much of it is ready (or the file is complete)


class _File:
    def __init__(self, chunks: list[tuple[int, int]], pending: set[int]):
        self.chunks = chunks  # (offset, length) in file order
        self.pending = pending  # offsets of chunks not written yet
        self.next = 0  # index of the first chunk past the prefix
        self.prefix = 0  # bytes ready to hash
        self.hashed = 0
        self.size = sum(n for _, n in chunks)
        # blake3's own threads spin (sched_yield) between small updates and contend with the decoding
        # threads and workers that keep both cores busy: measured on a 10,000-file pull, 73,000
        # sched_yield and 239,000 futex calls; one thread hashes at 0.15 s per GB.
        self.hasher = file_hasher(threads=False)
        self.advance()

    def advance(self) -> None:
        while self.next < len(self.chunks) and self.chunks[self.next][0] not in self.pending:
            self.prefix = self.chunks[self.next][0] + self.chunks[self.next][1]
            self.next += 1


class PrefixHasher:
    """Hashes part files on a background thread as their written prefix grows.

    ``files`` maps each part file to its chunks (offset, length) in order;
    ``pending`` names the (part, offset) still to be written.  Call ``written``
    as chunks land, then ``digests`` once every chunk is written.
    """

    def __init__(self, files: dict[str, list[tuple[int, int]]], pending: Iterable[tuple[str, int]],
                 known: dict[str, bytes] | None = None):  # fmt: skip
        """``known``: part files of a single chunk, with its id: the BLAKE3 of all their bytes, computed when
        the chunk was verified, so they are not read back (10,000 small files: 10,000 opens and reads)."""
        self._known = dict(known or {})
        unwritten: dict[str, set[int]] = {p: set() for p in files if p not in self._known}
        for part, offset in pending:
            if part in unwritten:
                unwritten[part].add(offset)
        self._files = {p: _File(chunks, unwritten[p]) for p, chunks in files.items() if p not in self._known}
        # Files with a prefix ready to hash, in the order they became ready (a dict as an ordered set):
        # scanning every file for work made pulling 10,000 small files quadratic in Python.
        self._ready: dict[str, None] = {p: None for p, f in self._files.items() if self._is_ready(f)}
        self._cond = threading.Condition()
        self._finishing = self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cas-prefix-hash", daemon=True)
        self._thread.start()

    def written(self, targets: Iterable[tuple[str, int]]) -> None:
        """Chunks now on disk, as (part, offset)."""
        with self._cond:
            ready = False
            for part, offset in targets:
                f = self._files.get(part)
                if f is None:  # known
                    continue
                f.pending.discard(offset)
                f.advance()
                if self._is_ready(f):
                    self._ready[part] = None
                    ready = True
            if ready:
                self._cond.notify()

    def digests(self) -> dict[str, bytes]:
        """Finish hashing (every chunk must be written by now); the file id each part file hashes to."""
        with self._cond:
            self._finishing = True
            self._ready.update((p, None) for p, f in self._files.items() if f.prefix > f.hashed)
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return {**self._known, **{p: f.hasher.digest() for p, f in self._files.items()}}

    def stop(self) -> None:
        """Abandon hashing (the pull failed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    job = self._next_job()
                    while job is None and not self._stopped and not self._finishing:
                        self._cond.wait()
                        job = self._next_job()
                    if self._stopped or job is None:
                        return
                part, f, end = job
                self._hash(part, f, end)
        except BaseException as e:  # noqa: BLE001 - handed to the caller of digests()
            self._error = e

    def _is_ready(self, f: _File) -> bool:
        return f.prefix - f.hashed >= STEP or (f.prefix > f.hashed and f.prefix == f.size)

    def _next_job(self) -> tuple[str, _File, int] | None:
        while self._ready:
            part = next(iter(self._ready))
            del self._ready[part]
            f = self._files[part]
            if f.prefix > f.hashed and (self._finishing or self._is_ready(f)):
                return part, f, f.prefix
        return None

    @staticmethod
    def _hash(part: str, f: _File, end: int) -> None:
        fd = os.open(part, os.O_RDONLY)
        try:
            while f.hashed < end:
                block = os.pread(fd, min(STEP, end - f.hashed), f.hashed)
                if not block:
                    raise OSError(f"{part} ended at {f.hashed} bytes, expected {f.size}")
                f.hasher.update(block)
                f.hashed += len(block)
        finally:
            os.close(fd)
