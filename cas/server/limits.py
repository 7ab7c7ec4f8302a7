"""What one client can hold of ``cas serve``: a deadline for its request head, and a bound on its connections.

A client sending its request head a byte at a time (slowloris) would hold a
connection for ever: aiohttp waits for a head without a deadline.  Every
connection is wrapped: its first request head must be complete within
``HEAD_TIMEOUT`` seconds of connecting, or the connection is closed.  Later
requests on a kept-alive connection are not timed here (where a body ends is
the server's to know); aiohttp closes a connection idle between requests.

One address may hold at most ``PER_CLIENT`` connections at once (a pull
opens 16; the bound leaves room for a host of several processes pulling at
once, or a NAT in front of a few): one more is answered ``503`` with
``Retry-After`` and closed, so a client cannot take every file descriptor
of the server, and cas's own clients retry it as they retry any 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

HEAD_TIMEOUT = 10.0  # seconds to send a whole request head
PER_CLIENT = 256  # connections one address may hold at once
END_OF_HEAD = b"\r\n\r\n"
BUSY_TEXT = b"too many connections from your address; retry later\n"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BUSY_TEXT), BUSY_TEXT))  # fmt: skip

log = logging.getLogger("cas.server")


def bounded(factory: Callable[[], asyncio.Protocol], *, timeout: float = HEAD_TIMEOUT, per_client: int = PER_CLIENT
            ) -> Callable[[], asyncio.Protocol]:  # fmt: skip
    """A protocol factory (for ``loop.create_server``) whose connections must send their first request head
    within ``timeout`` seconds, at most ``per_client`` of them open from one address."""
    clients = Clients(per_client)
    return lambda: Bounded(factory(), timeout, clients)


class Clients:
    """The connections open now, per client address."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.refusing: set[str] = set()  # addresses refused since they last dropped below the limit

    def admit(self, address: str) -> bool:
        """Count one more connection from ``address``; False (and nothing counted) past the limit."""
        if self.open[address] >= self.limit:
            if address not in self.refusing:  # one log line per burst, not one per refused connection
                self.refusing.add(address)
                log.warning("%s: holds %d connections, the most one address may; refusing more with 503",
                            address, self.limit)  # fmt: skip
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
        self.refusing.discard(address)


class Bounded(asyncio.Protocol):
    """One connection: the server's protocol, closed if its first request head takes too long; answered 503
    and closed at once if its address holds too many connections already."""

    def __init__(self, inner: asyncio.Protocol, timeout: float, clients: Clients):
        self.inner, self.timeout, self.clients = inner, timeout, clients
        self.transport: asyncio.BaseTransport | None = None
        self.address: str | None = None  # counted in ``clients`` while open
        self.deadline: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes of the head being read, to find its end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.clients.admit(address):  # answered, then closed once the client has read it (or in 1 s)
            transport.write(BUSY)  # type: ignore[attr-defined]
            transport.write_eof()  # type: ignore[attr-defined]
            self.deadline = asyncio.get_running_loop().call_later(1.0, transport.abort)  # type: ignore[attr-defined]
            return
        self.address = address
        self.deadline = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        log.warning("%s: closed a connection whose request head took over %.0f s", self.address, self.timeout)
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.address is None:  # refused: what it sends is read and dropped, so that closing resets nothing
            return
        if self.deadline is not None:
            seen = self.tail + data
            if END_OF_HEAD in seen:
                self.deadline.cancel()
                self.deadline = None
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.address is not None else None  # refused: close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.address is None:
            return
        self.clients.release(self.address)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.address is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.address is not None:
            self.inner.resume_writing()
