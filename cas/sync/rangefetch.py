"""Fetching one range of a pack: read it, decode and verify each chunk in threads, write it where it goes.

Used alike by a pull's own process and by its worker processes
(``fetchworker``).  Nothing is written that did not decode to its declared
length and hash to its chunk id; a chunk that fails is read again on its
own (``REREADS`` times), then stops the pull with an error naming it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ..content import codec
from ..errors import CorruptObject
from ..repo.repository import Repository
from .partfiles import Parts
from .pullplan import Piece, Range, Target

REREADS = 3  # a chunk that fails verification is read again alone this many times before the pull stops


class Fetcher:
    """Runs ranges of one pull against one repository: fetch, decode in threads, verify, write."""

    def __init__(self, tag: str, repo: Repository, parts: Parts, threads: int):
        self.tag = tag
        self.repo = repo
        self.parts = parts
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cas-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    async def run(self, r: Range) -> int:
        """Fetch one range; returns the encoded bytes fetched."""
        loop = asyncio.get_running_loop()
        body = await self.repo.read(r.pack_id, r.start, r.end)
        fetched = len(body)
        bad = await loop.run_in_executor(self.pool, _decode_and_write, body, r.start, r.pieces, self.parts)
        del body
        for p in bad:  # a chunk that failed verification gets more chances, alone: a network can damage twice
            for _ in range(REREADS):
                again = await self.repo.read(r.pack_id, p.offset, p.offset + p.length)
                fetched += len(again)
                if not await loop.run_in_executor(self.pool, _decode_and_write, again, p.offset, [p], self.parts):
                    break
            else:
                raise CorruptObject(
                    f"{self.tag}: chunk {p.chunk_id.hex()} from pack {r.pack_id} in {self.repo.url} failed "
                    f"verification {REREADS + 1} times; the repository, or something between it and this host (a "
                    "proxy, a CDN), damages it (nothing corrupt was stored; run 'cas verify --remote' on it)"
                )
        return fetched


def _decode_and_write(body: bytes, base: int, pieces: list[Piece], parts: Parts) -> list[Piece]:
    """Decode, verify and write each chunk of one range; returns the pieces that failed verification."""
    bad = []
    written: list[Target] = []
    view = memoryview(body)
    for p in pieces:
        try:
            data = codec.decode(view[p.offset - base : p.offset - base + p.length], p.raw_length, p.chunk_id)
        except CorruptObject:
            bad.append(p)
            continue
        parts.write(p.targets, data)
        written += p.targets
    parts.mark(written)
    return bad
