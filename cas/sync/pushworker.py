"""Push worker processes (``python -m cas.sync.pushworker``) and the messages a push exchanges with them.

A large push builds its packs in its own process and in workers beside it,
one pack per process at a time: in one process, the encoding threads queued
for the GIL between their chunks (reading, hashing and compressing release
it; the Python around each 77 KB chunk does not).  Each worker opens the
repository itself and uploads what it builds.  The protocol, msgpack values
on the worker's stdin and stdout:

    push -> worker   ["start", url], then ["build", pid, [[chunk_id, length, blob, offset], ...]] as it frees up,
                     then ["end"]
    worker -> push   ["built", pid, pack_id, size, [[chunk_id, offset, length, raw_length, codec], ...]] once
                     each pack is uploaded; or ["failed", kind, message, errno], and it exits

A worker whose stdin closes without ``end`` (the push died) exits at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from ..errors import CasError
from ..repo.format import IndexEntry
from ..repo.repository import Repository, token
from ..repo.stores import open_backend
from ..system.files import write_all
from .packing import Builder, Chunk, Packed
from .workers import fail_and_exit, replies, send

IN_FLIGHT = 2  # packs sent to a worker at once: it builds the next while it uploads one


async def feed(proc: asyncio.subprocess.Process, url: str, packs: deque[list[Chunk]],
               done: Callable[[Packed], None]) -> None:  # fmt: skip
    """Keep one worker building packs from ``packs`` until none are left, then let it exit; ``done`` gets each
    pack it uploaded."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(_packed(["start", url]))
    sent: dict[int, list[Chunk]] = {}
    unpacker = msgpack.Unpacker(raw=False)
    pid = 0
    while True:
        while len(sent) < IN_FLIGHT and packs:
            pid += 1
            sent[pid] = packs.popleft()
            chunks = [[c.chunk_id, c.length, str(c.blob), c.offset] for c in sent[pid]]
            proc.stdin.write(_packed(["build", pid, chunks]))
        if not sent:
            await send(proc)
            break
        died = ("a push worker (python -m cas.sync.pushworker) exited with code {code} mid-push; push again (what was "
                "uploaded is reused)")  # fmt: skip
        for _, got, pack_id, size, entries in await replies(proc, unpacker, not packs, died):
            sent.pop(got)
            done(Packed(pack_id, size, [IndexEntry(*e) for e in entries]))
    await proc.wait()


def _packed(msg: list[Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


async def _serve() -> None:
    """The worker: read start, then build messages; build and upload each pack, and say so."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    unpacker = msgpack.Unpacker(raw=False)
    todo: asyncio.Queue[tuple[int, list[Chunk]] | None] = asyncio.Queue()
    building: asyncio.Task[None] | None = None
    ended = False
    while data := await reader.read(1 << 16):
        unpacker.feed(data)
        for kind, *rest in unpacker:
            if kind == "start" and building is None:
                building = asyncio.ensure_future(_build(rest[0], todo))
            elif kind == "build" and building is not None:
                pid, chunks = rest
                todo.put_nowait((pid, [Chunk(c, n, Path(b), o) for c, n, b, o in chunks]))
            elif kind == "end":
                ended = True
                todo.put_nowait(None)
            else:
                fail_and_exit(CasError(f"the push sent {kind!r} out of turn"))
    if not ended or building is None:  # the push died (a kill leaves no end): stop now
        os._exit(1)
    await building


async def _build(url: str, todo: asyncio.Queue[tuple[int, list[Chunk]] | None]) -> None:
    """Build and upload each pack sent, in turn; the first failure is reported and ends this worker."""
    builder = Builder(Repository(open_backend(url, token=token(), creating=True)))
    try:
        while (item := await todo.get()) is not None:
            pid, chunks = item
            await builder.add(chunks, functools.partial(_report, pid))
        await builder.close()
    except BaseException as e:  # noqa: BLE001 - any failure ends this worker, reported to the push
        fail_and_exit(e)
    finally:
        await builder.repo.close()


def _report(pid: int, packed: Packed) -> None:
    write_all(1, _packed(["built", pid, packed.pack_id, packed.size, [list(e) for e in packed.entries]]))


if __name__ == "__main__":
    asyncio.run(_serve())
