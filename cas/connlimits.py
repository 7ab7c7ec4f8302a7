"""A deadline for each request head ``cas serve`` reads: a client cannot hold a connection by never finishing one.

A client sending its request head a byte at a time (slowloris) would hold a
connection for ever: aiohttp waits for a head without a deadline.  Every
connection is wrapped: its first request head must be complete within
``HEAD_TIMEOUT`` seconds of connecting, or the connection is closed.  Later
requests on a kept-alive connection are not timed here (where a body ends is
the server's to know); aiohttp closes a connection idle between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

HEAD_TIMEOUT = 10.0  # seconds to send a whole request head
END_OF_HEAD = b"\r\n\r\n"

log = logging.getLogger("cas.server")


def with_head_deadline(factory: Callable[[], asyncio.Protocol], timeout: float = HEAD_TIMEOUT
                       ) -> Callable[[], asyncio.Protocol]:  # fmt: skip
    """A protocol factory whose connections must send their first request head within ``timeout`` seconds
    (give it to ``loop.create_server``)."""
    return lambda: HeadDeadline(factory(), timeout)


class HeadDeadline(asyncio.Protocol):
    """One connection: the server's protocol, closed if its first request head takes too long."""

    def __init__(self, inner: asyncio.Protocol, timeout: float):
        self.inner, self.timeout = inner, timeout
        self.transport: asyncio.BaseTransport | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes of the head being read, to find its end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.deadline = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.warning("%s: closed a connection whose request head took over %.0f s", peer[0] if peer else "?",
                    self.timeout)  # fmt: skip
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.deadline is not None:
            seen = self.tail + data
            if END_OF_HEAD in seen:
                self.deadline.cancel()
                self.deadline = None
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
