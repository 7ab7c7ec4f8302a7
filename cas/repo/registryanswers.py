"""A registry's answers, read as nothing it sends is trusted: bodies bounded, ranges exact, errors escaped.

A manifest is read up to the limit asked, a range exactly (from a ``206``,
or from a ``200`` whose server ignored ``Range``, read that far only), and
a refusal's error document (``{"errors": [{"code", "message"}]}``) shown
escaped in one line.  A failure worth another attempt (a connection
dropped, a 5xx, a 429, a short body) is ``Transient``, which the client
retries.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp

from ..errors import NotFound, RepoError


class Transient(Exception):
    """A failure worth another attempt: connection error, timeout, 5xx, 429, short body."""


# What a manifest PUT is answered while a racing writer links the same blob into the repository (distribution
# reads its half-written link file): seen in racing pushes of one model's versions; a moment later it passes.
SETTLING = ("(DIGEST_INVALID:", "(MANIFEST_BLOB_UNKNOWN:", "(BLOB_UNKNOWN:")


async def read_answer(method: str, url: str, resp: aiohttp.ClientResponse, expect: tuple[int, ...], limit: int,
                      window: tuple[int, int] | None, *, anonymous: bool) -> Answer:  # fmt: skip
    """What a request was answered, its body read within bounds; every refusal one clear error, every
    failure worth another attempt ``Transient``."""
    if resp.status == 404:
        raise NotFound(f"{shown(url)} is not in the registry")
    if resp.status in (401, 403):
        who = "anonymous access" if anonymous else "these credentials"
        raise RepoError(f"{method} {shown(url)}: {resp.status} {resp.reason} for {who}; set "
                        "CAS_REGISTRY_USERNAME and CAS_REGISTRY_PASSWORD or log in with docker login")  # fmt: skip
    if resp.status >= 500 or resp.status == 429:
        raise Transient(f"{resp.status} {resp.reason}")
    if resp.status not in expect:
        said = error_said(await resp.content.read(4096))
        if resp.status == 400 and "/manifests/" in url and any(c in said for c in SETTLING):
            raise Transient(f"{resp.status}{said}")  # another writer is linking the same blob: again
        raise RepoError(f"{method} {shown(url)}: unexpected {resp.status} {resp.reason}{said}")
    if window is not None:
        return Answer(resp.status, await read_window(resp, *window, partial=resp.status == 206), resp.headers)
    if method in ("HEAD", "DELETE", "PUT", "POST", "PATCH"):
        return Answer(resp.status, b"", resp.headers)
    return Answer(resp.status, await read_at_most(resp, limit, url), resp.headers)


class Answer(NamedTuple):
    """A request's status, its body as far as it was read (nothing for HEAD, PUT, ...), its headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]


async def read_at_most(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise RepoError(f"{shown(url)}: {declared} bytes, more than the {limit} allowed; refused")
    body = bytearray()
    while len(body) <= limit and (block := await resp.content.read(limit + 1 - len(body))):
        body += block
    if len(body) > limit:
        raise RepoError(f"{shown(url)}: more than the {limit} bytes allowed; refused")
    if declared is not None and len(body) < declared:
        raise Transient(f"short body: {len(body)} of {declared} bytes")
    return bytes(body)


async def read_window(resp: aiohttp.ClientResponse, start: int, end: int, *, partial: bool) -> bytes:
    """Exactly ``start`` up to ``end``: from a 206, its body; from a 200 (Range ignored), read that far only."""
    skipped = 0
    try:
        if partial:
            body = await resp.content.readexactly(end - start)
            if await resp.content.read(1):
                raise RepoError(f"a range of {end - start} bytes came with more; refused")
            return body
        while skipped < start:
            got = await resp.content.read(min(1 << 20, start - skipped))
            if not got:
                raise Transient("the blob ended before the range")
            skipped += len(got)
        return await resp.content.readexactly(end - start)
    except asyncio.IncompleteReadError as e:
        raise Transient(f"a range of {end - start} bytes ended after {len(e.partial)}") from None


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise RepoError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise RepoError(f"{what} is not a JSON object")
    return doc


def error_said(body: bytes) -> str:
    """What a registry's error body says (``{"errors": [{"code", "message"}]}``), escaped, or nothing."""
    try:
        first = json.loads(body)["errors"][0]
        return f" ({first['code']}: {first['message']})"[:300].encode("unicode_escape").decode("ascii")
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def next_page(link: str | None) -> str | None:
    """The next page of a listing, from an RFC 5988 ``Link: </v2/...>; rel="next"`` header (same registry)."""
    found = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link or "")
    if not found or not found.group(1).startswith("/v2/"):
        return None
    return found.group(1)


def same_host(base: str, url: str) -> str:
    """An absolute upload location must stay on the registry: credentials are sent there."""
    if not url.startswith(base + "/"):
        raise RepoError(f"{base}: an upload location points to another host ({shown(url)}); refused")
    return url


def shown(url: str) -> str:
    """A URL as printed: its query (upload states, signatures) left out, control characters escaped."""
    return url.split("?", 1)[0].encode("unicode_escape").decode("ascii")
