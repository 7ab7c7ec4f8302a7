"""Which byte ranges a pull moves (pure): of packs it requests, and of local blobs it copies.

Neighbouring chunks of one pack closer than ``MAX_GAP`` share a request of
at most ``MAX_SPAN`` bytes: few requests (object stores and CDNs are slow
and costly per request), and memory bounded by requests in flight times
``MAX_SPAN``.  Ranges are ordered by where their first chunk goes, so files
complete, and are hashed, one after another.

Chunks a local blob holds are copied instead, neighbours that lie back to
back in both files as one run (``copy_runs``): a fine-tune's unchanged
tensors sit where they sat, so a changed file is a few long copies.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..local.chunkindex import Seed
from ..repo.format import Location, iter_ranges

MAX_SPAN = 4 << 20  # bytes per range request: bounds memory to concurrency * MAX_SPAN
MAX_GAP = 64 << 10  # neighbouring ranges closer than this share a request


class Target(NamedTuple):
    """Where one chunk goes: a part file being assembled, at an offset."""

    part: str
    offset: int


class Piece(NamedTuple):
    """One encoded chunk inside a range and every place its bytes go."""

    offset: int  # in the pack
    length: int  # encoded
    chunk_id: bytes
    raw_length: int
    targets: list[Target]


class Range(NamedTuple):
    """One HTTP Range request: a span of a pack holding one or more wanted chunks."""

    pack_id: str
    start: int
    end: int
    pieces: list[Piece]


def plan(wanted: dict[bytes, list[Target]], raw_len: dict[bytes, int], locations: dict[bytes, Location]) -> list[Range]:
    """Merge the wanted chunks of each pack into ranges, ordered by where their first chunk goes."""
    by_pack: dict[str, list[Piece]] = defaultdict(list)
    for cid, targets in wanted.items():
        loc = locations[cid]
        by_pack[loc.pack_id].append(Piece(loc.offset, loc.length, cid, raw_len[cid], targets))
    ranges = []
    for pack_id, pieces in by_pack.items():
        pieces.sort()
        spans = iter_ranges([(p.offset, p.length) for p in pieces], MAX_GAP, MAX_SPAN)
        i = 0
        for start, end in spans:
            j = i
            while j < len(pieces) and pieces[j].offset < end:
                j += 1
            ranges.append(Range(pack_id, start, end, pieces[i:j]))
            i = j
    ranges.sort(key=lambda r: min(r.pieces[0].targets))  # in file order: files complete, and hash, one by one
    return ranges


@dataclass
class CopyRun:
    """Bytes one local blob holds back to back, to be copied into one part file, and the chunks they are."""

    blob: tuple[bytes, bool]  # file id, executable
    blob_offset: int
    part: str
    offset: int  # in the part file
    length: int
    chunks: list[tuple[bytes, Target]]


def copy_runs(wanted: dict[bytes, list[Target]], seeds: dict[bytes, Seed]) -> list[CopyRun]:
    """Every wanted place of a chunk some local blob holds, merged into runs contiguous in both files."""
    places = sorted((t, seed, cid) for cid, seed in seeds.items() for t in wanted.get(cid, ()))
    runs: list[CopyRun] = []
    for target, seed, cid in places:
        blob, last = (seed.file_id, seed.executable), runs[-1] if runs else None
        if (last is not None and last.part == target.part and last.offset + last.length == target.offset
                and last.blob == blob and last.blob_offset + last.length == seed.offset):  # fmt: skip
            last.length += seed.length
            last.chunks.append((cid, target))
        else:
            runs.append(CopyRun(blob, seed.offset, target.part, target.offset, seed.length, [(cid, target)]))
    return runs


class Backlog:
    """The ranges a pull has left, taken one at a time by its fetching slots and its workers' pipes."""

    def __init__(self, ranges: list[Range], on_done: Callable[[Range], None]):
        self._left = deque(ranges)
        self._on_done = on_done
        self.fetched = 0  # encoded bytes read so far

    def take(self) -> Range | None:
        return self._left.popleft() if self._left else None

    def empty(self) -> bool:
        return not self._left

    def done(self, r: Range, fetched: int) -> None:
        self.fetched += fetched
        self._on_done(r)
