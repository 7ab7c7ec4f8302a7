"""The OCI distribution API (``/v2/``) as a registry client speaks it: the transport of ``oci://`` repositories.

Blobs are addressed by their sha256 digest and read whole or by ``Range``
(a registry may redirect a blob read to its storage: the redirect is
followed, and the credentials stay with the registry); they are uploaded
in one ``PUT`` after a ``POST`` opens the upload, or in ``PATCH`` pieces
when large, or mounted from another repository of the same registry.
Manifests are JSON documents stored under a digest or a tag.

Authentication is what ``docker`` and ``oras`` do: a request answered 401
is sent again with what the ``WWW-Authenticate`` challenge asks for, Basic
credentials or a Bearer token from the registry's token service (asked
with the credentials, or anonymously); ``registryauth`` finds the
credentials.  Nothing a registry sends is trusted: a
manifest is read up to ``MAX_MANIFEST_BYTES``, a blob up to the limit asked,
a range exactly, a tag listing to ``MAX_TAGS``, each request retried like
the HTTP backend's and bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlencode, urljoin

import aiohttp

from ..errors import NotFound, RepoError
from . import CONCURRENCY, stall_timeout
from .registryanswers import (
    Answer,
    Transient,
    json_object,
    next_page,
    read_answer,
    read_at_most,
    same_host,
    shown,
)
from .registryauth import Credentials, challenge

RETRIES = 5
BACKOFF = 0.2  # seconds, doubled per attempt, with jitter
MAX_MANIFEST_BYTES = 4 << 20  # what the distribution registry itself accepts
MAX_TAGS = 1_000_000
TAGS_PAGE = 1000  # tags asked per page of a listing
PIECE = 64 << 20  # uploads larger than this go in PATCH pieces of this size
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Blob(NamedTuple):
    digest: str  # sha256:<hex>
    size: int


def digest_of(data: bytes | bytearray) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


class Registry:
    """One registry (``base`` is ``https://HOST[:PORT]``, or ``http://`` for a local one), one pooled session."""

    def __init__(self, base: str, *, credentials: Credentials | None = None, concurrency: int = CONCURRENCY):
        self.base = base.rstrip("/")
        self._credentials = credentials
        self._limit = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[str, str] = {}  # scope (or "" for Basic) -> Authorization header value

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # blobs

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """The size of a blob the repository holds, or None."""
        try:
            answer = await self._send("HEAD", f"/v2/{repo}/blobs/{digest}", repo, expect=(200,))
        except NotFound:
            return None
        return int(answer.headers.get("Content-Length") or 0)

    async def get_blob(self, repo: str, digest: str, limit: int) -> bytes:
        """A whole blob, refused past ``limit`` bytes, checked against its digest."""
        answer = await self._send("GET", f"/v2/{repo}/blobs/{digest}", repo, expect=(200,), limit=limit)
        if digest_of(answer.body) != digest:
            raise RepoError(f"{self.base}: blob {digest} of {repo} does not hash to its digest")
        return answer.body

    async def get_range(self, repo: str, digest: str, start: int, end: int) -> bytes:
        """Bytes ``start`` up to ``end`` of a blob, exactly: a server ignoring Range is read that far only."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        answer = await self._send("GET", f"/v2/{repo}/blobs/{digest}", repo, expect=(200, 206), headers=headers,
                                  window=(start, end))  # fmt: skip
        return answer.body

    async def put_blob(self, repo: str, data: bytes | bytearray) -> Blob:
        """Upload a blob (a no-op when the repository has it): one PUT, or PATCH pieces past ``PIECE``."""
        blob = Blob(digest_of(data), len(data))
        if await self.blob_size(repo, blob.digest) == blob.size:
            return blob
        opened = await self._send("POST", f"/v2/{repo}/blobs/uploads/", repo, expect=(202,), push=True)
        where = self._location(opened)
        pieces = [(start, min(start + PIECE, len(data))) for start in range(0, len(data), PIECE)] or [(0, 0)]
        for start, end in pieces[:-1]:
            headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"}
            answer = await self._send("PATCH", where, repo, expect=(202,), data=bytes(data[start:end]),
                                      headers=headers, push=True)  # fmt: skip
            where = self._location(answer)
        start, end = pieces[-1]
        sep = "&" if "?" in where else "?"
        await self._send("PUT", f"{where}{sep}{urlencode({'digest': blob.digest})}", repo, expect=(201,),
                         data=bytes(data[start:end]), headers={"Content-Type": "application/octet-stream"},
                         push=True)  # fmt: skip
        return blob

    async def put_file(self, repo: str, path: Path) -> tuple[Blob, bool]:
        """Upload a file as a blob without holding it: hashed first, then sent in ``PIECE``-sized PATCHes.
        Also says whether it was sent (False: the repository held it)."""
        blob = Blob(await asyncio.to_thread(_sha256_file, path), path.stat().st_size)
        if await self.blob_size(repo, blob.digest) == blob.size:
            return blob, False
        opened = await self._send("POST", f"/v2/{repo}/blobs/uploads/", repo, expect=(202,), push=True)
        where = self._location(opened)
        with path.open("rb") as f:
            for start in range(0, blob.size, PIECE):
                piece = await asyncio.to_thread(f.read, PIECE)
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{start}-{start + len(piece) - 1}"}  # fmt: skip
                answer = await self._send("PATCH", where, repo, expect=(202,), data=piece, headers=headers, push=True)
                where = self._location(answer)
        sep = "&" if "?" in where else "?"
        await self._send("PUT", f"{where}{sep}{urlencode({'digest': blob.digest})}", repo, expect=(201,),
                         data=b"", headers={"Content-Type": "application/octet-stream"}, push=True)  # fmt: skip
        if await self.blob_size(repo, blob.digest) != blob.size:
            raise RepoError(f"{self.base}: {path.name} was uploaded to {repo} but the registry does not hold it")
        return blob, True

    async def get_file(self, repo: str, blob: Blob, out: BinaryIO) -> None:
        """Write a blob to ``out`` in ``PIECE``-sized ranges (each retried alone), checked against its digest."""
        digest = hashlib.sha256()
        for start in range(0, blob.size, PIECE):
            piece = await self.get_range(repo, blob.digest, start, min(start + PIECE, blob.size))
            digest.update(piece)
            await asyncio.to_thread(out.write, piece)
        if "sha256:" + digest.hexdigest() != blob.digest:
            raise RepoError(f"{self.base}: blob {blob.digest} of {repo} does not hash to its digest")

    async def mount(self, repo: str, digest: str, source: str) -> bool:
        """Link a blob of ``source`` into ``repo`` without sending it; False when the registry would not."""
        query = urlencode({"mount": digest, "from": source})
        answer = await self._send("POST", f"/v2/{repo}/blobs/uploads/?{query}", repo, expect=(201, 202), push=True,
                                  scopes=(f"repository:{source}:pull",))  # fmt: skip
        if answer.status == 202:  # an upload was opened instead: close it
            await self._send("DELETE", self._location(answer), repo, expect=(204, 404), push=True)
        return answer.status == 201

    # manifests and tags

    async def get_manifest(self, repo: str, reference: str, media_type: str = MANIFEST) -> tuple[bytes, str]:
        """A manifest by tag or digest, and its digest (checked when asked by digest)."""
        headers = {"Accept": media_type}
        answer = await self._send("GET", f"/v2/{repo}/manifests/{reference}", repo, expect=(200,), headers=headers,
                                  limit=MAX_MANIFEST_BYTES)  # fmt: skip
        digest = digest_of(answer.body)
        if reference.startswith("sha256:") and digest != reference:
            raise RepoError(f"{self.base}: manifest {reference} of {repo} does not hash to its digest")
        return answer.body, digest

    async def manifest_digest(self, repo: str, reference: str, media_type: str = MANIFEST) -> str | None:
        """The digest of the manifest a tag names now, or None when there is none (HEAD, or GET when a registry
        sends no ``Docker-Content-Digest``)."""
        try:
            answer = await self._send("HEAD", f"/v2/{repo}/manifests/{reference}", repo, expect=(200,),
                                      headers={"Accept": media_type})  # fmt: skip
        except NotFound:
            return None
        digest = answer.headers.get("Docker-Content-Digest", "")
        if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return digest
        try:
            return (await self.get_manifest(repo, reference, media_type))[1]
        except NotFound:
            return None

    async def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str = MANIFEST) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        await self._send("PUT", f"/v2/{repo}/manifests/{reference}", repo, expect=(201,), data=body,
                         headers={"Content-Type": media_type}, push=True)  # fmt: skip
        return digest_of(body)

    async def put_referrer(self, repo: str, body: bytes) -> bool:
        """Store a manifest with a ``subject`` by its digest; True when the registry indexes it as a referrer
        (it answers ``OCI-Subject``), False when the client must list it in the fallback index."""
        answer = await self._send("PUT", f"/v2/{repo}/manifests/{digest_of(body)}", repo, expect=(201,), data=body,
                                  headers={"Content-Type": MANIFEST}, push=True)  # fmt: skip
        return bool(answer.headers.get("OCI-Subject"))

    async def delete_manifest(self, repo: str, digest: str) -> None:
        """Remove a manifest (and every tag on it); one already gone is fine."""
        try:
            answer = await self._send("DELETE", f"/v2/{repo}/manifests/{digest}", repo, expect=(202, 405), push=True,
                             scopes=(f"repository:{repo}:delete",))  # fmt: skip
        except NotFound:
            return
        if answer.status == 405:
            raise RepoError(f"{self.base} does not allow deletes, so {repo} keeps {digest}: enable them in the "
                            "registry (distribution: storage.delete.enabled: true) and remove again")  # fmt: skip

    async def tags(self, repo: str) -> list[str]:
        """Every tag of ``repo``, following the registry's pages; an unknown repository has none."""
        return await self._pages(f"/v2/{repo}/tags/list?n={TAGS_PAGE}", repo, "tags", f"the tag list of {repo}")

    async def catalog(self) -> list[str] | None:
        """Every repository of the registry, or None where the catalog is closed (many hosted registries)."""
        try:
            return await self._pages(f"/v2/_catalog?n={TAGS_PAGE}", "", "repositories", "the catalog")
        except (NotFound, RepoError):
            return None

    async def _pages(self, path: str | None, repo: str, field: str, what: str) -> list[str]:
        found: list[str] = []
        while path is not None:
            try:
                answer = await self._send("GET", path, repo, expect=(200,), limit=MAX_MANIFEST_BYTES,
                                          scopes=() if repo else ("registry:catalog:*",))  # fmt: skip
            except NotFound:
                if not repo:
                    raise
                return found
            names = json_object(answer.body, f"{self.base}: {what}").get(field) or []
            if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
                raise RepoError(f"{self.base}: {what} is not a list of names")
            found += names
            if len(found) > MAX_TAGS:
                raise RepoError(f"{self.base}: {what} holds more than {MAX_TAGS} names; refused")
            path = next_page(answer.headers.get("Link"))
        return found

    # the transport

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            stall = stall_timeout()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=stall),
            )
        return self._session

    def _location(self, answer: Answer) -> str:
        where = answer.headers.get("Location")
        if not where:
            raise RepoError(f"{self.base}: an upload was opened without a Location to send it to")
        return where if where.startswith("/") else same_host(self.base, where)

    async def _send(self, method: str, path: str, repo: str, *, expect: tuple[int, ...], push: bool = False,
                    scopes: tuple[str, ...] = (), limit: int = 0, window: tuple[int, int] | None = None,
                    **kw: Any) -> Answer:  # fmt: skip
        """One request, authenticated as the registry asks and retried; the body read up to ``limit``."""
        own = [f"repository:{repo}:{'pull,push' if push else 'pull'}"] if repo else []
        scope = " ".join((*own, *scopes))
        url = urljoin(self.base + "/", path)
        extra = kw.pop("headers", None) or {}
        challenged = False
        attempt = 0
        while True:
            headers = {**extra, **self._authorization(scope)}
            try:
                async with self._client().request(method, url, headers=headers, **kw) as resp:
                    if resp.status == 401 and not challenged:  # once per request: then the refusal stands
                        challenged = True
                        await self._authenticate(resp.headers.get("WWW-Authenticate", ""), scope)
                        continue
                    return await read_answer(
                        method, url, resp, expect, limit, window, anonymous=self._credentials is None
                    )
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, Transient) as e:
                attempt += 1
                if attempt == RETRIES:
                    raise RepoError(f"{method} {shown(url)} failed {RETRIES} times, last: {e or type(e).__name__}") \
                        from None  # fmt: skip
                await asyncio.sleep(BACKOFF * 2**attempt * (0.5 + random.random()))

    def _authorization(self, scope: str) -> dict[str, str]:
        value = self._auth.get(scope) or self._auth.get("")
        return {"Authorization": value} if value else {}

    async def _authenticate(self, header: str, scope: str) -> None:
        """Answer a 401's challenge: Basic credentials, or a Bearer token from the realm it names."""
        scheme, params = challenge(header)
        if scheme == "basic" and self._credentials:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            self._auth[""] = "Basic " + base64.b64encode(pair).decode()
        elif scheme == "bearer" and params.get("realm"):
            self._auth[scope] = "Bearer " + await self._token(params, scope)

    async def _token(self, params: dict[str, str], scope: str) -> str:
        """A token from the registry's token service for ``scope`` (the challenge's own scope is asked too)."""
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in dict.fromkeys([*scope.split(" "), *params.get("scope", "").split(" ")]) if s]
        headers = {}
        if self._credentials:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        url = f"{params['realm']}?{urlencode(query)}"
        try:
            async with self._client().get(url, headers=headers) as resp:
                if resp.status != 200:
                    raise RepoError(f"the token service {shown(params['realm'])} of {self.base} answered "
                                    f"{resp.status} {resp.reason}; check CAS_REGISTRY_USERNAME and "
                                    "CAS_REGISTRY_PASSWORD or docker login")  # fmt: skip
                doc = json_object(await read_at_most(resp, MAX_MANIFEST_BYTES, url), "the token service's answer")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise RepoError(f"the token service {shown(params['realm'])} of {self.base} failed: {e}") from None
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise RepoError(f"the token service {shown(params['realm'])} of {self.base} sent no token")
        return token
