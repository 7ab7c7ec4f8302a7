"""Which local blob holds a chunk: the "seed" that lets a pull reuse bytes already on this host.

An SQLite table on disk (``<cache>/chunks.sqlite``), so a million chunks
never need to be in memory; it is derived from the trees, so losing it
costs only reuse, never correctness (every reused chunk is re-hashed).
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..content.tree import FileEntry
from ..system.dirs import make_dirs, open_shared
from ..system.forking import SQLITE

FIND_BATCH = 500  # under SQLite's default limit of 999 bound parameters on old builds

# SQLITE is held around every call into SQLite, so that a fork (a preloading server forking its workers while a
# pull runs in a thread) never copies a connection in the middle of a call or a transaction: the child closes
# the connections it inherited, which SQLite's in-process lock records otherwise confuse, and opens its own.
_OPEN: weakref.WeakSet[ChunkIndex] = weakref.WeakSet()


class Seed(NamedTuple):
    file_id: bytes
    executable: bool
    offset: int
    length: int


class ChunkIndex:
    def __init__(self, path: Path):
        make_dirs(path.parent)
        os.close(open_shared(path, os.O_RDONLY))  # group-writable in a shared cache; SQLite's WAL files follow it
        with SQLITE:
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            _OPEN.add(self)
            self._set_up()

    def _set_up(self) -> None:
        for attempt in range(100):  # switching to WAL takes a lock SQLite's busy timeout does not wait for
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")  # derived data: losing the last writes costs only reuse
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (id BLOB PRIMARY KEY, file BLOB NOT NULL, exec INTEGER NOT NULL,"
            " offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID"
        )

    def add_files(self, files: Iterable[FileEntry]) -> None:
        """Record where every chunk of these stored files lies (first writer wins)."""
        with SQLITE, self._db:  # one transaction, not one per row
            self._db.execute("BEGIN IMMEDIATE")  # a writer from the start: no upgrade that SQLite refuses as a deadlock
            self._db.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)", _rows(files))

    def find(self, chunk_ids: Iterable[bytes]) -> dict[bytes, Seed]:
        """Where each of these chunks lies locally, for those any stored blob holds."""
        out = {}
        ids = list(chunk_ids)
        for i in range(0, len(ids), FIND_BATCH):  # one query per batch: 3x faster than one per id
            batch = ids[i : i + FIND_BATCH]
            marks = ",".join("?" * len(batch))
            sql = f"SELECT id, file, exec, offset, length FROM chunks WHERE id IN ({marks})"
            with SQLITE:
                rows = self._db.execute(sql, batch).fetchall()
            for cid, file_id, executable, offset, length in rows:
                out[cid] = Seed(file_id, bool(executable), offset, length)
        return out

    def forget_file(self, file_id: bytes) -> None:
        """Drop the entries of a blob that is gone, so later pulls do not try it first."""
        with SQLITE:
            self._db.execute("DELETE FROM chunks WHERE file = ?", (file_id,))

    def retain(self, file_ids: Iterable[bytes]) -> int:
        """Drop the entries of every blob but these (gc: what it removed, and blobs gone before); returns
        how many were dropped."""
        with SQLITE, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # a writer from the start: no upgrade that SQLite refuses as a deadlock
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS live (file BLOB PRIMARY KEY) WITHOUT ROWID")
            self._db.execute("DELETE FROM live")
            self._db.executemany("INSERT OR IGNORE INTO live VALUES (?)", ((f,) for f in file_ids))
            dropped = self._db.execute("DELETE FROM chunks WHERE file NOT IN (SELECT file FROM live)").rowcount
            self._db.execute("DELETE FROM live")
        with SQLITE:  # into the database file, and the log emptied: gc then measures what the index really takes
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return dropped

    def close(self) -> None:
        with SQLITE:
            self._db.close()

    def close_inherited(self) -> None:
        """In a forked child: close the parent's connection (no thread is inside SQLite); the child opens its
        own (see ``LocalCache.chunk_index``)."""
        self._db.close()


def _close_inherited() -> None:
    for index in list(_OPEN):
        index.close_inherited()


SQLITE.in_child(_close_inherited)


def _rows(files: Iterable[FileEntry]) -> Iterator[tuple[bytes, bytes, int, int, int]]:
    for f in files:
        offset = 0
        for cid, length in f.chunk_list():
            yield (cid, f.file_id, int(f.executable), offset, length)
            offset += length
