"""The HTTP backend: one pooled aiohttp session, keep-alive, retries with backoff.

Reads are plain GETs (with a single Range for pack bytes), so any static
web server or CDN can serve a repository read-only.  Listing and writing
use ``cas serve``'s ``GET /?list=PREFIX``, token-authenticated ``PUT`` and ``DELETE``:
``If-None-Match: *`` creates a key only if absent, ``If-Match: <etag>``
replaces a listing only if nobody changed it since it was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
from typing import Any, NamedTuple

import aiohttp

from ..errors import InvalidManifest, NotFound, RepoError
from . import CONCURRENCY, stall_timeout
from .backend import Change
from .format import MAX_DOC_BYTES, check_key, marks_key

RETRIES = 5
BACKOFF = 0.2  # seconds, doubled per attempt, with jitter
CONNECT = 10.0  # seconds to open a connection
UPDATE_TRIES = 20  # a listing changed by other pushes this many times in a row: give up
MAX_LISTED = 10_000_000  # keys in one listing
SAID_BYTES = 300  # of a refusal's body, shown in the error


async def _said(resp: aiohttp.ClientResponse) -> str:
    """What the server said about a refusal (``cas serve`` says why in its first line), bounded: a hostile
    server's body is read no further than this."""
    try:
        head = await asyncio.wait_for(resp.content.read(SAID_BYTES), 5)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return ""
    line = head.decode("utf-8", "replace").strip().partition("\n")[0]
    return f": the server says {line!r}" if line else ""


class _Transient(Exception):
    """A failure worth another attempt: connection error, timeout, 5xx, short body."""


class _Answer(NamedTuple):
    status: int
    body: bytes
    etag: str | None


class HttpBackend:
    def __init__(self, url: str, *, token: str | None, concurrency: int = CONCURRENCY, stall: float | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self._limit = concurrency
        self._stall = stall if stall is not None else stall_timeout()
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
        **kw: Any,
    ) -> _Answer:
        """One request, retried; the body is read up to ``limit`` bytes, or (a 200 to a Range) only ``window``."""
        url = f"{self.url}/{key}"
        for attempt in range(RETRIES):
            try:
                async with self._client().request(method, url, **kw) as resp:
                    if resp.status == 404:
                        raise NotFound(f"{key} is not in the repository {self.url}")
                    if resp.status in (401, 403, 405, 501) and resp.status not in expect:
                        raise RepoError(f"{method} {url}: {resp.status} {resp.reason}; {self._refused(method, resp)}")
                    if resp.status >= 500 or resp.status == 429:
                        raise _Transient(f"{resp.status} {resp.reason}")
                    if resp.status not in expect:
                        raise RepoError(f"{method} {url}: unexpected {resp.status} {resp.reason}{await _said(resp)}")
                    etag = resp.headers.get("ETag")
                    if resp.status == 200 and window is not None:
                        return _Answer(resp.status, await _read_window(resp, *window), etag)
                    return _Answer(resp.status, await _read_body(resp, url, limit, buffer=window is not None), etag)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, _Transient) as e:
                if attempt == RETRIES - 1:
                    raise RepoError(f"{method} {url} failed {RETRIES} times, last: {self._describe(e)}") from None
                await asyncio.sleep(BACKOFF * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _refused(self, method: str, resp: aiohttp.ClientResponse) -> str:
        """What to do about a refused request: a token to give, or a server that only serves reads."""
        if resp.status == 401 or (resp.status == 403 and "WWW-Authenticate" in resp.headers):
            return "check CAS_TOKEN" if self._token else "set CAS_TOKEN to the server's token"
        if resp.status == 403 and self._token:
            return "check CAS_TOKEN"
        if method == "DELETE" or str(resp.url).endswith("/" + marks_key()):  # rm --remote and prune write these
            return (f"removal needs a writable repository and the token: {self.url} serves it read-only; remove "
                    "through the cas serve, file:// or s3:// URL it is pushed to, with CAS_TOKEN for cas "
                    "serve")  # fmt: skip
        if method == "PUT":
            return (f"{self.url} does not accept uploads (a static web server serves a repository read-only): push to "
                    "a cas serve, file:// or s3:// repository and serve its folder")  # fmt: skip
        return f"{self.url} refuses it"

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

    async def get(self, key: str, limit: int = MAX_DOC_BYTES) -> bytes:
        return (await self._request("GET", key, expect=(200,), limit=limit)).body

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        # A server that ignores Range sends the whole pack: only the window is kept.
        body = (await self._request("GET", key, expect=(200, 206), headers={"Range": f"bytes={start}-{end - 1}"},
                                    limit=end - start, window=(start, end))).body  # fmt: skip
        if len(body) != end - start:
            raise RepoError(f"{self.url}/{key}: range {start}-{end} returned {len(body)} bytes")
        return body

    async def create(self, key: str, data: bytes | bytearray) -> bool:
        answer = await self._request("PUT", key, expect=(200, 201, 204, 412), data=data, headers={"If-None-Match": "*"})
        return answer.status in (201, 204)  # 412, or 200 from a server without conditions: it was there

    async def update(self, key: str, change: Change) -> None:
        for _ in range(UPDATE_TRIES):
            try:
                current = await self._request("GET", key, expect=(200,), headers={"Cache-Control": "no-cache"})
            except NotFound:
                current = None
            new = change(current.body if current else None)
            if new is None:
                return
            if current is not None and not current.etag:
                raise RepoError(f"{self.url}/{key}: the server gives no ETag, so it cannot be updated safely")
            condition = {"If-Match": current.etag} if current else {"If-None-Match": "*"}
            put = await self._request("PUT", key, expect=(200, 201, 204, 412), data=new, headers=condition)
            if put.status != 412:
                return
            await asyncio.sleep(BACKOFF * random.random())  # another push changed it meanwhile: again
        raise RepoError(f"{self.url}/{key} changed under this push {UPDATE_TRIES} times in a row; push again")

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):  # gone already: what a removal wants
            await self._request("DELETE", key, expect=(200, 204))

    async def list(self, prefix: str) -> list[str]:
        try:
            body = (await self._request("GET", f"?list={prefix}", expect=(200,))).body
        except (NotFound, RepoError) as e:
            raise RepoError(f"{self.url} cannot list {prefix} (a static web server lists nothing): {e}") from None
        return parse_listing(body, prefix, self.url)


def parse_listing(body: bytes, prefix: str, url: str) -> list[str]:
    """The keys of a listing answer, each checked to be a key of the layout under ``prefix``."""
    try:
        keys = [k for k in body.decode("utf-8").split("\n") if k]
        if len(keys) > MAX_LISTED:
            raise InvalidManifest(f"more than {MAX_LISTED} keys")
        for k in keys:
            if not k.startswith(prefix):
                raise InvalidManifest(f"{k!r:.80} is not under {prefix}")
            check_key(k)
    except (UnicodeDecodeError, InvalidManifest) as e:
        raise RepoError(f"{url} answered a listing of {prefix} with something else ({e}); it is not a cas "
                        "repository, or not one that lists") from None  # fmt: skip
    return sorted(keys)


async def _read_body(resp: aiohttp.ClientResponse, url: str, limit: int, *, buffer: bool = False) -> bytes:
    """The whole body, refused past ``limit`` bytes: a hostile server must not fill our memory.

    ``buffer``: return the bytearray the body was read into rather than a ``bytes`` copy of it (pack
    ranges, decoded through memoryviews: a copy of every byte pulled spared, 0.1 s per GB).
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise RepoError(f"GET {url}: the server announces {resp.content_length} bytes, more than the {limit} "
                        "this object may have; it is not a cas repository or it is damaged")  # fmt: skip
    body = bytearray()
    async for block in resp.content.iter_any():  # blocks as received: iter_chunked joins them first (a copy)
        body += block
        if len(body) > limit:
            raise RepoError(f"GET {url}: the server sent more than the {limit} bytes this object may have; "
                            "it is not a cas repository or it is damaged")  # fmt: skip
    if resp.content_length is not None and len(body) != resp.content_length:
        raise _Transient(f"body of {len(body)} bytes, {resp.content_length} announced")
    return body if buffer else bytes(body)  # type: ignore[return-value]


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
