"""An S3-compatible object store as a repository: ``s3://BUCKET[/PREFIX]`` (AWS S3, MinIO, R2, Ceph, GCS).

Credentials, region and endpoint come from the standard AWS configuration,
read by botocore: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the ``~/.aws`` files,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` (plain http is
allowed, for local servers).  Objects are created with S3's conditional
write (``If-None-Match: *``), so a ref can never be overwritten; listings
are replaced only under ``If-Match`` with the ETag they were read with.
Throttling (503 SlowDown), 5xx answers and dropped connections are retried
by botocore with backoff; a body cut short is fetched again here.  No error
ever carries a credential: messages are built from the error code, the
bucket and the key.

aiobotocore rather than obstore, measured on this machine against the same
S3 server: obstore imports in 9 ms against 180 ms and spends 0.95 against
3.1 CPU-seconds per GB of range reads, but 15-30% of the processes that used
it asynchronously died with SIGABRT at interpreter exit (its Rust runtime),
which a command line and a service cannot afford; aiobotocore is pure
Python over the aiohttp cas already uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any
from urllib.parse import urlparse

from ..errors import CasError, NotFound, RepoError
from . import CONCURRENCY, stall_timeout
from .backend import Change
from .format import MAX_DOC_BYTES, check_key

RETRIES = 5  # attempts per request, botocore's own retries included
UPDATE_TRIES = 20


class S3Backend:
    def __init__(self, url: str, *, concurrency: int = CONCURRENCY):
        parsed = urlparse(url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        if not self.bucket:
            raise RepoError(f"repository URL {url!r} names no bucket; use s3://BUCKET[/PREFIX]")
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._concurrency = concurrency
        self._stall = stall_timeout()
        self._context: Any = None
        self._client: Any = None

    async def _s3(self) -> Any:
        """The client, made on first use in the running loop (aiobotocore is imported only then)."""
        if self._client is None:
            try:
                from aiobotocore.session import get_session
                from botocore.config import Config
            except ImportError:
                raise RepoError("s3:// repositories need aiobotocore: pip install 'cas[s3]'") from None
            config = Config(max_pool_connections=self._concurrency, connect_timeout=10, read_timeout=self._stall,
                            retries={"max_attempts": RETRIES, "mode": "standard"})  # fmt: skip
            self._context = get_session().create_client("s3", config=config)
            self._client = await self._context.__aenter__()
        return self._client

    async def close(self) -> None:
        if self._context is not None:
            await self._context.__aexit__(None, None, None)
            self._context = self._client = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def get(self, key: str, limit: int = MAX_DOC_BYTES) -> bytes:
        return (await self._read(key, None, limit))[0]

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        body = (await self._read(key, (start, end)))[0]
        if len(body) != end - start:
            raise RepoError(f"{self.url}/{key}: range {start}-{end} returned {len(body)} bytes")
        return body

    async def _read(self, key: str, window: tuple[int, int] | None, limit: int = MAX_DOC_BYTES) -> tuple[bytes, str]:
        """An object or a window of it, and its ETag; a body cut short is read again, a few times."""
        extra = {"Range": f"bytes={window[0]}-{window[1] - 1}"} if window else {}
        for attempt in range(RETRIES):
            resp = await self._call("GET", key, "get_object", **extra)
            try:
                return await _body(resp, window, f"{self.url}/{key}", limit), resp.get("ETag", "")
            except CasError:
                raise
            except Exception as e:  # noqa: BLE001 - a body cut short, reset or stalled: read it again
                if attempt == RETRIES - 1:
                    raise RepoError(f"GET {self.url}/{key} failed {RETRIES} times, last: {self._words(e)}") from None
                await asyncio.sleep(0.2 * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def list(self, prefix: str) -> list[str]:
        s3 = await self._s3()
        keys: list[str] = []
        try:
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                             Prefix=self._key(prefix)):  # fmt: skip
                keys += [k for o in page.get("Contents", []) if (k := self._ours(o.get("Key")))]
        except Exception as e:  # noqa: BLE001 - botocore's errors, said in words
            raise self._error("LIST", prefix, e) from None
        return sorted(keys)

    def _words(self, e: BaseException) -> str:
        """What went wrong with a request or a body, in words rather than class names."""
        name = type(e).__name__
        if isinstance(e, asyncio.TimeoutError) or "Timeout" in name:
            return f"no data for {self._stall:g} s (CAS_STALL_TIMEOUT)"
        if "NoCredentials" in name or "PartialCredentials" in name:
            return "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        if "EndpointConnection" in name or isinstance(e, ConnectionError):
            endpoint = self._client.meta.endpoint_url if self._client is not None else "the object store"
            return f"cannot connect to {endpoint}: check AWS_ENDPOINT_URL, or try again when it is up"
        first_line = str(e).splitlines()[0] if str(e) else ""
        return f"{name}: {first_line}"

    def _ours(self, key: object) -> str | None:
        """A listed object's key in the layout, or None for anything else under the prefix."""
        if not isinstance(key, str):
            return None
        key = key[len(self.prefix) + 1 :] if self.prefix else key
        try:
            check_key(key)
        except ValueError:
            return None
        return key

    async def create(self, key: str, data: bytes | bytearray) -> bool:
        try:
            await self._call("PUT", key, "put_object", Body=data, IfNoneMatch="*")
        except _Conflict:
            return False
        return True

    async def update(self, key: str, change: Change) -> None:
        for _ in range(UPDATE_TRIES):
            try:
                current, etag = await self._read(key, None)
            except NotFound:
                current, etag = None, ""
            new = change(current)
            if new is None:
                return
            condition = {"IfMatch": etag} if current is not None else {"IfNoneMatch": "*"}
            try:
                await self._call("PUT", key, "put_object", Body=new, **condition)
                return
            except _Conflict:
                await asyncio.sleep(0.2 * random.random())  # another push changed it meanwhile: again
        raise RepoError(f"{self.url}/{key} changed under this push {UPDATE_TRIES} times in a row; push again")

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):  # S3 answers 204 for a missing key; compatibles may say 404
            await self._call("DELETE", key, "delete_object")

    async def _call(self, method: str, key: str, operation: str, **kw: Any) -> Any:
        s3 = await self._s3()
        try:
            return await getattr(s3, operation)(Bucket=self.bucket, Key=self._key(key), **kw)
        except Exception as e:  # noqa: BLE001 - botocore's errors, said in words
            raise self._error(method, key, e) from None

    def _error(self, method: str, key: str, e: Exception) -> Exception:
        """One line for a failed request, naming the repository and what to do; never a credential."""
        where = f"{method} {self.url}/{key}"
        response = getattr(e, "response", None)
        if not isinstance(response, dict):
            return RepoError(f"{where} failed: {self._words(e)}")
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return _Conflict()
        if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"{key} is not in the repository {self.url}")
        return RepoError(f"{where}: {code or status} {_ADVICE.get(code, _advice_for(status, self.bucket))}")


_ADVICE = {
    "NoSuchBucket": "(the bucket does not exist: create it, or fix CAS_REMOTE and AWS_ENDPOINT_URL)",
    "AccessDenied": "(access denied: check the AWS credentials, AWS_PROFILE, and the bucket's policy)",
    "InvalidAccessKeyId": "(the AWS access key is not known there: check AWS_ACCESS_KEY_ID or AWS_PROFILE)",
    "SignatureDoesNotMatch": "(the request's signature was refused: check AWS_SECRET_ACCESS_KEY or AWS_PROFILE)",
    "ExpiredToken": "(the AWS session token has expired: renew AWS_SESSION_TOKEN)",
    "SlowDown": "(throttled after every retry: pull with a lower --concurrency, or later)",
}


def _advice_for(status: object, bucket: str) -> str:
    if status == 403:
        return "(access denied: check the AWS credentials, AWS_PROFILE, and the bucket's policy)"
    if isinstance(status, int) and status >= 500:
        return f"(the object store failed after {RETRIES} attempts; try again later)"
    return f"(the object store refused it: check the bucket {bucket} and the AWS configuration)"


class _Conflict(Exception):
    """A conditional write found the key changed or present (412): not an error for the caller."""


class _ShortBody(Exception):
    """A body that ended before its length: read again."""


async def _body(resp: dict[str, Any], window: tuple[int, int] | None, where: str, doc_limit: int) -> bytes:
    """The body of a GET, never more than an object may have; of a Range GET a server ignored, only the window."""
    length = resp.get("ContentLength")
    limit = doc_limit if window is None else window[1] - window[0]
    whole = window is not None and "ContentRange" not in resp  # the Range was ignored: the whole object came
    if not whole and isinstance(length, int) and length > limit:
        raise RepoError(f"GET {where}: the store announces {length} bytes, more than the {limit} this object may "
                        "have; it is not a cas repository or it is damaged")  # fmt: skip
    start, end = (window[0], window[1]) if whole and window else (0, limit)
    out = bytearray()
    pos = 0
    async with resp["Body"] as stream:
        while pos < end and (block := await stream.read(1 << 20)):
            lo, hi = max(start - pos, 0), min(end - pos, len(block))
            if lo < hi:
                out += block[lo:hi]
            pos += len(block)
        if not whole and await stream.read(1):
            raise RepoError(f"GET {where}: the store sent more than the {limit} bytes this object may have")
    if isinstance(length, int) and not whole and len(out) != length:
        raise _ShortBody(f"the body ended after {len(out)} of {length} bytes")
    return bytes(out)
