"""``cas serve DIR``: the repository layout of DIR over HTTP (aiohttp).

GET (with a single Range) and HEAD serve any key of the layout; ``GET
/?list=PREFIX`` lists keys; PUT and DELETE need the bearer token.  PUT is checked before
it is accepted: a tree or pack must hash to its name, a pack index must
describe its pack chunk by chunk, a locator must point into packs the
repository has, a ref must name a tree and locator that exist (so refs
come last), and a listing or the prune marks must decode.  Every object but
those documents is created once and never changed (``If-None-Match: *``
answers 412 when it exists), except a locator a prune's repack rewrites;
documents and locators are replaced only under ``If-Match`` with the ETag
(a hash of their bytes) they were read with.  DELETE removes one key of the
layout (the listings excepted: they are updated) and is idempotent.  Bodies are streamed to a temporary
file, limited in size, and moved into place atomically under the folder's
update lock, and flushed (with any folder made for it) before the answer; DIR stays a valid ``file://``
repository throughout.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

import blake3
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..content import codec
from ..content import ref as refs
from ..content.digest import file_hasher
from ..content.tree import decode as decode_tree
from ..errors import CasError
from ..repo import listing, marks
from ..repo.file import locked_folder
from ..repo.format import (
    MAX_PACK_BYTES,
    check_key,
    decode_index,
    decode_locator,
    index_key,
    locator_key,
    marks_key,
    tree_key,
)
from ..system.dirs import make_durable_dirs
from ..system.files import move_into_place, publish
from ..system.names import temp_name
from ..trust.documents import open_envelope
from .limits import PER_CLIENT, bounded

MAX_SMALL_BODY = 256 << 20  # trees, indexes, locators, refs
LIST_PREFIXES = ("refs/", "trees/", "packs/", "locators/", "index/", "trust/")
MUTABLE = ("names", "versions", "marks", "trust-state")  # listings, prune marks, the signed state; the rest: once
REPLACEABLE = (*MUTABLE, "locator")  # a repack rewrites locators, under If-Match
log = logging.getLogger("cas.server")


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def make_app(root: Path, *, token: str | None, read_token: bool = False) -> web.Application:
    root = root.absolute()
    make_durable_dirs(root)
    handlers = _Handlers(root, token, read_token)
    app = web.Application(client_max_size=MAX_PACK_BYTES)
    app.router.add_get("/", handlers.listing)
    app.router.add_get("/{key:.+}", handlers.get)
    app.router.add_put("/{key:.+}", handlers.put)
    app.router.add_delete("/{key:.+}", handlers.delete)
    return app


class _Handlers:
    """The requests a repository folder answers: reads (GET, HEAD, listing) and token-checked uploads."""

    def __init__(self, root: Path, token: str | None, read_token: bool):
        self.root, self.token, self.read_token = root, token, read_token

    def need_token(self, request: web.Request) -> None:
        if self.token is None:
            raise web.HTTPForbidden(text="this server is read-only: start it with --token-file or CAS_TOKEN\n")
        given = request.headers.get("Authorization")
        if given is None:
            raise web.HTTPUnauthorized(text="a bearer token is required\n", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise web.HTTPForbidden(text="wrong token\n")

    async def get(self, request: web.Request) -> web.StreamResponse:
        if self.read_token:
            self.need_token(request)
        key = _key_of(request)
        path = self.root / key
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{key} not found\n")
        if check_key(key)[0] in REPLACEABLE:  # small and changing: its ETag is a hash of its bytes, for If-Match
            data = await asyncio.to_thread(path.read_bytes)
            return web.Response(body=data, headers={"Cache-Control": "no-cache", "ETag": _etag(data)})
        cache_control = "no-cache" if key.startswith(("refs/", "trust/state")) else "max-age=31536000, immutable"
        return web.FileResponse(path, headers={"Cache-Control": cache_control})

    async def listing(self, request: web.Request) -> web.Response:
        if self.read_token:
            self.need_token(request)
        prefix = request.query.get("list")
        if prefix is None:
            return web.Response(text="cas repository\n")
        if not prefix.startswith(LIST_PREFIXES) or ".." in prefix.split("/"):
            raise web.HTTPBadRequest(text=f"cannot list {prefix!r}; prefixes start with {', '.join(LIST_PREFIXES)}\n")
        keys = await asyncio.to_thread(_list, self.root, prefix)
        return web.Response(text="".join(k + "\n" for k in keys))

    async def put(self, request: web.Request) -> web.Response:
        self.need_token(request)
        key = _key_of(request)
        limit = MAX_PACK_BYTES if check_key(key)[0] == "pack" else MAX_SMALL_BODY
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(exist_ok=True)
        tmp = tmp_dir / temp_name("put-")
        try:
            digest = await _receive(request, tmp, limit)
            conditions = (request.headers.get("If-None-Match"), request.headers.get("If-Match"))
            try:
                status = await asyncio.to_thread(_accept, self.root, key, tmp, digest, conditions)
            except Rejected as e:
                raise _http_error(e.status, str(e)) from None
        finally:
            tmp.unlink(missing_ok=True)
        return web.Response(status=status)

    async def delete(self, request: web.Request) -> web.Response:
        self.need_token(request)
        key = _key_of(request)
        if check_key(key)[0] in ("names", "versions"):
            raise web.HTTPBadRequest(text=f"{key}: listings are updated, never deleted\n")
        await asyncio.to_thread(_remove, self.root, key)
        return web.Response(status=204)


def _remove(root: Path, key: str) -> None:
    with locked_folder(root):  # not in the middle of a commit of the same key
        (root / key).unlink(missing_ok=True)


def _key_of(request: web.Request) -> str:
    key = request.match_info["key"]
    try:
        check_key(key)
    except CasError:
        raise web.HTTPNotFound(text=f"{key!r} is not a key of the repository layout\n") from None
    return key


def _http_error(status: int, text: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 409: web.HTTPConflict, 412: web.HTTPPreconditionFailed,
           413: web.HTTPRequestEntityTooLarge}.get(status)  # fmt: skip
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, text=text + "\n")
    return (cls or web.HTTPBadRequest)(text=text + "\n")


async def _receive(request: web.Request, tmp: Path, limit: int) -> bytes:
    """Stream the body to ``tmp`` (at most ``limit`` bytes), hashing it on the way."""
    hasher = file_hasher(threads=False)
    size = 0
    with open(tmp, "xb") as f:
        async for block in request.content.iter_chunked(1 << 20):
            size += len(block)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            hasher.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return hasher.digest()


def _accept(root: Path, key: str, tmp: Path, digest: bytes, conditions: tuple[str | None, str | None]) -> int:
    """Check an upload against what its key promises, then move it into place. Returns the HTTP status."""
    kind, *parts = check_key(key)
    data = tmp.read_bytes() if kind != "pack" else b""
    try:
        _CHECKS[kind](root, key, parts, data, digest)
    except CasError as e:
        raise Rejected(400, f"{key}: {e}") from None
    with locked_folder(root):  # one commit at a time, also against file:// writers of this folder
        if kind in MUTABLE or (kind == "locator" and conditions[1] is not None):
            return _replace(root / key, tmp, *conditions)
        return _create(root / key, tmp, data if kind == "ref" else None, if_none_match=conditions[0])


def _create(dest: Path, tmp: Path, ref: bytes | None, *, if_none_match: str | None) -> int:
    """Link an object into place unless it exists: never rewritten, never half there, durable before the answer
    (so before any object that refers to it is accepted)."""
    if publish(tmp, dest):
        return 201
    if if_none_match == "*":
        raise Rejected(412, f"{dest.name} exists")
    if ref is not None:  # a client without conditions: the same version with other content is a conflict
        old, new = refs.decode(dest.read_bytes()), refs.decode(ref)
        if old.root != new.root:
            raise Rejected(409, f"{new.tag} exists with root {old.root[:12]}; push under a new version")
    return 200


def _replace(dest: Path, tmp: Path, if_none_match: str | None, if_match: str | None) -> int:
    """Replace a listing only if it is still what the writer read (compare-and-set on its ETag)."""
    try:
        current: bytes | None = dest.read_bytes()
    except FileNotFoundError:
        current = None
    if if_none_match == "*" and current is not None:
        raise Rejected(412, f"{dest.name} exists")
    if if_match is not None and (current is None or _etag(current) != if_match):
        raise Rejected(412, f"{dest.name} changed since it was read")
    move_into_place(tmp, dest)
    return 200 if current is not None else 201


def _etag(data: bytes) -> str:
    return f'"{blake3.blake3(data).hexdigest()}"'


def _check_named(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
    """A tree or a pack must hash to its name; a tree must also decode."""
    if digest.hex() != parts[0]:
        raise Rejected(400, f"{key}: the body hashes to {digest.hex()}, not to its name")
    if key.startswith("trees/"):
        decode_tree(data)


def _check_locator(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
    if not (root / tree_key(parts[0])).is_file():
        raise Rejected(409, f"{key}: upload trees/{parts[0]} first")
    for pack_id in {loc.pack_id for loc in decode_locator(data).values()}:
        if not (root / index_key(pack_id)).is_file():
            raise Rejected(409, f"{key}: it points into pack {pack_id}, which has no index here")


def _check_ref(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
    """A ref names a tree and locator already here: refs go last."""
    name, version = parts
    info = refs.decode(data, name=name, version=version)
    for needed in (tree_key(info.root), locator_key(info.root)):
        if not (root / needed).is_file():
            raise Rejected(409, f"{key}: upload {needed} first (refs go last)")


def _check_listing(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
    """A listing or the prune marks must decode: readers take them as they are."""
    if key == marks_key():
        marks.decode(data)
    elif parts:
        listing.decode_versions(data)
    else:
        listing.decode_names(data)


def _check_index(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
    """A pack index must describe its pack, already here, chunk by chunk."""
    pack_id = parts[0]
    pack = root / f"packs/{pack_id}"
    if not pack.is_file():
        raise Rejected(409, f"packs/{pack_id}.idx: upload the pack first")
    size, entries = decode_index(data)
    if size != pack.stat().st_size:
        raise Rejected(400, f"packs/{pack_id}.idx declares {size} bytes, the pack has {pack.stat().st_size}")
    with open(pack, "rb") as f:
        for e in entries:
            blob = os.pread(f.fileno(), e.length, e.offset)
            if blob[:1] != bytes([e.codec]):
                raise Rejected(400, f"packs/{pack_id}.idx: chunk {e.chunk_id.hex()[:16]} has another codec")
            try:
                codec.decode(blob, e.raw_length, e.chunk_id)
            except CasError as err:
                raise Rejected(400, f"packs/{pack_id}.idx does not describe its pack: {err}") from None


def _trust_check(kind: str) -> Callable[[Path, str, list[str], bytes, bytes], None]:
    """A trust document must be an envelope of its kind (its signatures are for readers to count)."""

    def check(root: Path, key: str, parts: list[str], data: bytes, digest: bytes) -> None:
        open_envelope(data, kind, key)

    return check


_CHECKS = {"tree": _check_named, "pack": _check_named, "index": _check_index, "locator": _check_locator,
           "ref": _check_ref, "names": _check_listing, "versions": _check_listing, "marks": _check_listing,
           **{f"trust-{kind}": _trust_check(kind) for kind in ("state", "root", "role")}}  # fmt: skip


def _list(root: Path, prefix: str) -> list[str]:
    base = root / prefix.rstrip("/") if prefix.endswith("/") else (root / prefix).parent
    if not base.is_dir():
        return []
    out = []
    for dirpath, dirnames, names in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in names:
            key = Path(dirpath, n).relative_to(root).as_posix()
            if not n.startswith(".") and key.startswith(prefix):
                out.append(key)
    return sorted(out)


class AccessLog(AbstractAccessLogger):
    """One line a request: client, request line, status, body bytes sent (a 206's range, not its headers:
    aiohttp's ``%b`` counts only what passes through its buffer, a few hundred bytes for a file it sends by
    ``sendfile``) and seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        sent = response.content_length if response.content_length is not None else response.body_length
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.6fs', request.remote, request.method, request.path_qs,
                         *request.version, response.status, sent, time)  # fmt: skip


def serve(root: Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          read_token: bool = False, per_client: int = PER_CLIENT) -> None:  # fmt: skip
    """Run the server until SIGINT or SIGTERM (aiohttp shuts down cleanly on both); one address holds at most
    ``per_client`` connections at once."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = make_app(root, token=token, read_token=read_token)
    mode = "read-write" if token else "read-only"
    print(f"cas serve: {root.absolute()} on http://{host}:{port} ({mode})", flush=True)
    asyncio.run(_run(app, host, port, per_client))


async def _run(app: web.Application, host: str, port: int, per_client: int) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, every connection with a deadline for its request head and at most
    ``per_client`` from one address (``limits``), then shut down cleanly as aiohttp's ``run_app`` does."""
    import signal

    runner = web.AppRunner(app, access_log_class=AccessLog)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    factory = bounded(runner.server, per_client=per_client)  # type: ignore[arg-type]
    listening = await loop.create_server(factory, host, port, reuse_address=True)
    try:
        await stop.wait()
    finally:
        listening.close()
        await runner.cleanup()
