"""Running a pull's ranges: in this process and in fetch worker processes beside it.

Every fetching slot (here, and each worker's share) takes the next range
as it finishes one, so fast and slow connections balance themselves.  At
most ``concurrency`` ranges are in flight in all, and a slot is held until
its range is decoded and written, so memory is bounded by the slots however
fast the network is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from ..repo.repository import Repository
from .fetchworker import Start, feed
from .partfiles import FlushBehind, Parts
from .pullplan import Backlog, Range
from .rangefetch import Fetcher
from .workers import Workers, count_from_env, spare_cores

# Below this, a worker process costs more than it saves: at 537 MB (fp16, fp32) a worker added 0.3
# CPU-seconds (its interpreter, imports, pipe) to 1.5 and did not shorten the pull on two cores.
WORKERS_MIN_BYTES = 1 << 30
MAX_WORKERS = 8


def worker_count(size: int) -> int:
    """How many worker processes to add to this one for fetching ``size`` bytes.

    ``CAS_PULL_PROCESSES`` is obeyed whatever the size (tests rely on it to run workers on small models).
    """
    configured = count_from_env("CAS_PULL_PROCESSES", MAX_WORKERS)
    if configured is not None:
        return configured
    return min(spare_cores(), MAX_WORKERS) if size >= WORKERS_MIN_BYTES else 0


async def fetch(
    tag: str,
    repo: Repository,
    ranges: list[Range],
    concurrency: int,
    on_done: Callable[[Range], None],
    workers: Workers | None = None,
    *,
    flush_behind: list[str] | None = None,
) -> int:
    """Run every range, here and in ``workers``; calls ``on_done`` as each range is written and returns
    the encoded bytes fetched.  ``flush_behind`` (durable caches: the large part files, largest first)
    are written to disk as they fill, so the fsync before publishing does not start from scratch."""
    flusher = FlushBehind(flush_behind) if flush_behind else None
    procs = workers.procs if workers else []
    slots = max(1, concurrency // (len(procs) + 1))
    backlog = Backlog(ranges, on_done)
    parts = Parts()
    fetcher = Fetcher(tag, repo, parts, 2 if procs else os.cpu_count() or 2)
    start = Start(tag, repo.url, slots)
    try:
        await all_or_nothing([_run_here(backlog, fetcher) for _ in range(slots)] +
                             [feed(p, start, backlog) for p in procs])  # fmt: skip
    finally:
        fetcher.close()
        parts.close()
        if flusher:
            await asyncio.to_thread(flusher.stop)
    return backlog.fetched


async def _run_here(backlog: Backlog, fetcher: Fetcher) -> None:
    """One fetching slot of this process: fetch ranges until none are left."""
    while (r := backlog.take()) is not None:
        got = await fetcher.run(r)
        backlog.done(r, got)


async def all_or_nothing(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Await every coroutine; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
