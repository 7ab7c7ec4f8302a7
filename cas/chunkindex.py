"""Which local blob holds a chunk: the "seed" that lets a pull reuse bytes already on this host.

An SQLite table on disk (``<cache>/chunks.sqlite``), so a million chunks
never need to be in memory; it is derived from the trees, so losing it
costs only reuse, never correctness (every reused chunk is re-hashed).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .tree import Tree


class Seed(NamedTuple):
    file_id: bytes
    executable: bool
    offset: int
    length: int


class ChunkIndex:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # derived data: losing the last writes costs only reuse
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (id BLOB PRIMARY KEY, file BLOB NOT NULL, exec INTEGER NOT NULL,"
            " offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID"
        )

    def add_tree(self, tree: Tree) -> None:
        """Record where every chunk of a stored tree lies (first writer wins)."""
        with self._db:  # one transaction, not one per row
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)", _rows(tree))

    def find(self, chunk_ids: Iterable[bytes]) -> dict[bytes, Seed]:
        out = {}
        cur = self._db.cursor()
        for cid in chunk_ids:
            row = cur.execute("SELECT file, exec, offset, length FROM chunks WHERE id = ?", (cid,)).fetchone()
            if row is not None:
                out[cid] = Seed(row[0], bool(row[1]), row[2], row[3])
        return out

    def forget_file(self, file_id: bytes) -> None:
        """Drop the entries of a blob that is gone, so later pulls do not try it first."""
        self._db.execute("DELETE FROM chunks WHERE file = ?", (file_id,))

    def close(self) -> None:
        self._db.close()


def _rows(tree: Tree):
    for f in tree.files:
        offset = 0
        for cid, length in f.chunk_list():
            yield (cid, f.file_id, int(f.executable), offset, length)
            offset += length
