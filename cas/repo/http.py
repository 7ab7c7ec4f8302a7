"""The HTTP backend: one pooled aiohttp session, keep-alive, retries with backoff.

Reads are plain GETs (with a single Range for pack bytes), so any static
web server can serve a repository; listing and writing use ``cas serve``'s
``GET /?list=PREFIX`` and token-authenticated ``PUT``.
"""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp

from ..errors import NotFound
from .backend import RepoError

RETRIES = 5
BACKOFF = 0.2  # seconds, doubled per attempt, with jitter
STALL = 30.0  # seconds without a byte before a read counts as stalled (CAS_STALL_TIMEOUT)


class _Transient(Exception):
    """A failure worth another attempt: connection error, timeout, 5xx, short body."""


class HttpBackend:
    def __init__(self, url: str, *, token: str | None, concurrency: int = 16, stall: float | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self._limit = concurrency
        self._stall = stall if stall is not None else float(os.environ.get("CAS_STALL_TIMEOUT") or STALL)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._stall),
                headers={"Authorization": f"Bearer {self._token}"} if self._token else None,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, key: str, *, expect: tuple[int, ...], **kw) -> tuple[int, bytes]:
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
                    body = await resp.read() if method != "HEAD" else b""
                    if resp.content_length is not None and method != "HEAD" and len(body) != resp.content_length:
                        raise _Transient(f"body of {len(body)} bytes, {resp.content_length} announced")
                    return resp.status, body
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, _Transient) as e:
                if attempt == RETRIES - 1:
                    raise RepoError(f"{method} {url} failed {RETRIES} times, last: {type(e).__name__} {e}") from None
                await asyncio.sleep(BACKOFF * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def get(self, key: str) -> bytes:
        return (await self._request("GET", key, expect=(200,)))[1]

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        status, body = await self._request("GET", key, expect=(200, 206), headers={"Range": f"bytes={start}-{end - 1}"})
        if status == 200:  # the server ignored Range and sent the whole object
            body = body[start:end]
        if len(body) != end - start:
            raise RepoError(f"{self.url}/{key}: range {start}-{end} returned {len(body)} bytes")
        return body

    async def put(self, key: str, data: bytes, *, replace: bool = False) -> None:
        await self._request("PUT", key, expect=(200, 201, 204), data=data)

    async def exists(self, key: str) -> bool:
        try:
            await self._request("HEAD", key, expect=(200,))
        except NotFound:
            return False
        return True

    async def list(self, prefix: str) -> list[str]:
        body = (await self._request("GET", f"?list={prefix}", expect=(200,)))[1]
        return [k for k in body.decode().splitlines() if k]
