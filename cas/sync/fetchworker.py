"""Fetch worker processes (``python -m cas.sync.fetchworker``) and the messages a pull exchanges with them.

A large pull runs its ranges in its own process and in workers beside it,
each with its own connection pool and decoding threads: in one process the
event loop, HTTP parsing and decoding all queue for the GIL (on two cores,
decoding 1 GB of packs took 0.93 s in two threads and 0.80 s in two
processes; a 1 GB pull from ``cas serve`` 3.51 s in-process, 3.26 s with a
worker).  The protocol, msgpack values on the worker's stdin and stdout:

    pull -> worker   Start(tag, url, slots), then Work(rid, range) as slots free up, then END
    worker -> pull   Done(rid, fetched) for each range; or Failed(kind, message, errno), and it exits

A worker whose stdin closes without END (the pull died) exits at once and
writes nothing more (see ``cas.sync.workers`` for what the workers share).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, NamedTuple

import msgpack

from ..errors import CasError
from ..repo.repository import Repository, token
from ..repo.stores import open_backend
from ..system.files import write_all
from .partfiles import Parts
from .pullplan import Backlog, Piece, Range, Target
from .rangefetch import Fetcher
from .workers import Failed, fail_and_exit, replies, send


class Start(NamedTuple):
    tag: str
    url: str
    slots: int


class Work(NamedTuple):
    rid: int
    range: Range


class Done(NamedTuple):
    rid: int
    fetched: int


END = ("end",)
Message = Start | Work | Done | Failed | tuple[str]

_KINDS: dict[str, type] = {"start": Start, "done": Done, "failed": Failed}
_NAMES = {kind: name for name, kind in _KINDS.items()}


def encode(msg: Message) -> bytes:
    if isinstance(msg, Work):
        r = msg.range
        pieces = [[p.offset, p.length, p.chunk_id, p.raw_length, [list(t) for t in p.targets]] for p in r.pieces]
        body: list[Any] = ["work", msg.rid, r.pack_id, r.start, r.end, pieces]
    else:
        body = [_NAMES[type(msg)], *msg]
    return msgpack.packb(body, use_bin_type=True)


def decode(obj: list[Any]) -> Message:
    kind, *rest = obj
    if kind == "end":
        return END
    if kind == "work":
        rid, pack_id, start, end, pieces = rest
        return Work(rid, Range(pack_id, start, end, [Piece(o, n, c, raw, [Target(*t) for t in ts])
                                                     for o, n, c, raw, ts in pieces]))  # fmt: skip
    return _KINDS[kind](*rest)


async def feed(proc: asyncio.subprocess.Process, start: Start, backlog: Backlog) -> None:
    """Keep one worker busy with ranges from ``backlog`` until none are left, then let it exit."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(encode(start))
    sent: dict[int, Range] = {}
    unpacker = msgpack.Unpacker(raw=False)
    rid = 0
    while True:
        while len(sent) < start.slots and (r := backlog.take()) is not None:
            rid += 1
            sent[rid] = r
            proc.stdin.write(encode(Work(rid, r)))
        if not sent:
            await send(proc)
            break
        died = (f"{start.tag}: a fetch worker (python -m cas.sync.fetchworker) exited with code {{code}} mid-pull; "
                "pull again to resume")  # fmt: skip
        for obj in await replies(proc, unpacker, backlog.empty(), died):
            msg = decode(obj)
            assert isinstance(msg, Done)
            backlog.done(sent.pop(msg.rid), msg.fetched)
    await proc.wait()


async def _serve() -> None:
    """The worker: read Start, then Work, from stdin; answer Done for each range on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    unpacker = msgpack.Unpacker(raw=False)
    fetcher: Fetcher | None = None
    tasks: set[asyncio.Task[None]] = set()
    parts = Parts()
    ended = False
    try:
        while data := await reader.read(1 << 16):
            unpacker.feed(data)
            for msg in map(decode, unpacker):
                if msg is END:
                    ended = True
                elif isinstance(msg, Start):
                    backend = open_backend(msg.url, token=token(), concurrency=msg.slots)
                    fetcher = Fetcher(msg.tag, Repository(backend), parts, 2)
                elif isinstance(msg, Work):
                    if fetcher is None:
                        fail_and_exit(CasError("the pull sent a range before its Start message"))
                    task = asyncio.ensure_future(_run(fetcher, msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        if not ended:  # the pull died (a kill leaves no END): stop now, write nothing more into its files
            os._exit(1)
        while tasks:
            await asyncio.gather(*tasks)
    finally:
        if fetcher is not None:
            await fetcher.repo.close()
            fetcher.close()
        parts.close()


async def _run(fetcher: Fetcher, work: Work) -> None:
    try:
        got = await fetcher.run(work.range)
    except BaseException as e:  # noqa: BLE001 - any failure ends this worker, reported to the pull
        fail_and_exit(e)
    write_all(1, encode(Done(work.rid, got)))


if __name__ == "__main__":
    asyncio.run(_serve())
