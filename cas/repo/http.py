"""The HTTP backend: one pooled aiohttp session, keep-alive, retries with backoff.

Reads are plain GETs (with a single Range for pack bytes), so any static
web server can serve a repository; listing and writing use ``cas serve``'s
``GET /?list=PREFIX`` and token-authenticated ``PUT``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random

import aiohttp

from ..errors import NotFound, RepoError
from . import CONCURRENCY
from .format import MAX_DOC_BYTES

RETRIES = 5
BACKOFF = 0.2  # seconds, doubled per attempt, with jitter
STALL = 30.0  # seconds without a byte before a read counts as stalled (CAS_STALL_TIMEOUT)
CONNECT = 10.0  # seconds to open a connection


class _Transient(Exception):
    """A failure worth another attempt: connection error, timeout, 5xx, short body."""


class HttpBackend:
    def __init__(self, url: str, *, token: str | None, concurrency: int = CONCURRENCY, stall: float | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self._limit = concurrency
        self._stall = stall if stall is not None else float(os.environ.get("CAS_STALL_TIMEOUT") or STALL)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT, sock_read=self._stall),
                headers={"Authorization": f"Bearer {self._token}"} if self._token else None,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        key: str,
        *,
        expect: tuple[int, ...],
        limit: int = MAX_DOC_BYTES,
        window: tuple[int, int] | None = None,
        **kw,
    ) -> tuple[int, bytes]:
        """One request, retried; the body is read up to ``limit`` bytes, or (a 200 to a Range) only ``window``."""
        url = f"{self.url}/{key}"
        for attempt in range(RETRIES):
            try:
                async with self._client().request(method, url, **kw) as resp:
                    if resp.status == 404:
                        raise NotFound(f"{key} is not in the repository {self.url}")
                    if resp.status in (401, 403):
                        raise RepoError(
                            f"{method} {url}: {resp.status} {resp.reason}; "
                            + ("check CAS_TOKEN" if self._token else "set CAS_TOKEN to the server's token")
                        )
                    if resp.status >= 500 or resp.status == 429:
                        raise _Transient(f"{resp.status} {resp.reason}")
                    if resp.status not in expect:
                        raise RepoError(f"{method} {url}: unexpected {resp.status} {resp.reason}")
                    if resp.status == 200 and window is not None:
                        return resp.status, await _read_window(resp, *window)
                    return resp.status, await _read_body(resp, url, limit)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, _Transient) as e:
                if attempt == RETRIES - 1:
                    raise RepoError(f"{method} {url} failed {RETRIES} times, last: {self._describe(e)}") from None
                await asyncio.sleep(BACKOFF * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _describe(self, e: Exception) -> str:
        """What went wrong with one attempt, in words rather than aiohttp's class names."""
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return f"no connection within {CONNECT:g} s"
        if isinstance(e, asyncio.TimeoutError):
            return f"no data for {self._stall:g} s (CAS_STALL_TIMEOUT)"
        if isinstance(e, aiohttp.ServerDisconnectedError):
            return "the server closed the connection without an answer"
        if isinstance(e, aiohttp.ClientPayloadError):
            return "the server closed the connection before the end of the body"
        if isinstance(e, aiohttp.ClientConnectorError):
            return f"cannot connect ({e.os_error.strerror or e.os_error})"
        if isinstance(e, aiohttp.ClientOSError) and e.errno == errno.ECONNRESET:
            return "the connection was reset"
        return str(e) if isinstance(e, _Transient) else f"{type(e).__name__}: {e}"

    async def get(self, key: str) -> bytes:
        return (await self._request("GET", key, expect=(200,)))[1]

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        # A server that ignores Range sends the whole pack: only the window is kept.
        _, body = await self._request("GET", key, expect=(200, 206), headers={"Range": f"bytes={start}-{end - 1}"},
                                      limit=end - start, window=(start, end))  # fmt: skip
        if len(body) != end - start:
            raise RepoError(f"{self.url}/{key}: range {start}-{end} returned {len(body)} bytes")
        return body

    async def put(self, key: str, data: bytes, *, replace: bool = False) -> None:
        await self._request("PUT", key, expect=(200, 201, 204), data=data)

    async def list(self, prefix: str) -> list[str]:
        body = (await self._request("GET", f"?list={prefix}", expect=(200,)))[1]
        return [k for k in body.decode().splitlines() if k]


async def _read_body(resp: aiohttp.ClientResponse, url: str, limit: int) -> bytes:
    """The whole body, refused past ``limit`` bytes: a hostile server must not fill our memory."""
    if resp.content_length is not None and resp.content_length > limit:
        raise RepoError(f"GET {url}: the server announces {resp.content_length} bytes, more than the {limit} "
                        "this object may have; it is not a cas repository or it is damaged")  # fmt: skip
    body = bytearray()
    async for block in resp.content.iter_chunked(1 << 20):
        body += block
        if len(body) > limit:
            raise RepoError(f"GET {url}: the server sent more than the {limit} bytes this object may have; "
                            "it is not a cas repository or it is damaged")  # fmt: skip
    if resp.content_length is not None and len(body) != resp.content_length:
        raise _Transient(f"body of {len(body)} bytes, {resp.content_length} announced")
    return bytes(body)


async def _read_window(resp: aiohttp.ClientResponse, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of a whole object sent in reply to a Range request; reading stops at ``end``."""
    out = bytearray()
    pos = 0
    async for block in resp.content.iter_chunked(1 << 20):
        lo, hi = max(start - pos, 0), min(end - pos, len(block))
        if lo < hi:
            out += block[lo:hi]
        pos += len(block)
        if pos >= end:
            return bytes(out)  # the rest is not read: the connection closes instead of being reused
    raise _Transient(f"body ended at {pos} bytes, before the range {start}-{end}")
