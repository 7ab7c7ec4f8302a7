"""A small HTTP proxy in front of a repository server (cas serve, nginx, S3) that injects faults into pack reads.

    python tests/faultproxy.py UPSTREAM PORT [--fault KIND] [--every N] [--delay S]

Kinds: ``none``, ``500`` (a 500 instead of the body), ``drop`` (close the
connection before answering), ``reset`` (the same with a TCP reset),
``silent`` (take the request, never answer), ``truncate`` (announce the
full length, send half, close), ``flip`` (one flipped bit in the body),
``stall`` (send half, then hang), ``norange`` (ignore Range: send the
whole pack), ``403`` and ``slowdown`` (an object store's AccessDenied and
503 SlowDown, as XML).  The fault hits every N-th pack request (``--every 1``: all of
them, a permanent fault), at most ``--limit`` times.  One fault is not
about packs: ``bloat`` answers every tree request with 2 GB of zeros (``bloat-trust``: every trust
document request), and
``garbage`` answers every request with random bytes.
``--on-relist CMD`` runs CMD (and waits for it) before passing on the second listing of ``refs/``: a prune lists
the refs when it surveys and again right before deleting, so CMD is a push landing between the two.
Requests for anything else pass through untouched.  ``GET /_stats``
answers with the requests (all of them), pack requests and pack bytes served so far, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import struct

import aiohttp
from aiohttp import web

FORWARDED = ("range", "authorization", "accept", "if-match", "if-none-match")  # a writer's conditions too
S3_ERRORS = {"403": (403, "AccessDenied"), "slowdown": (503, "SlowDown")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("upstream")
    ap.add_argument("port", type=int)
    ap.add_argument("--fault", default="none")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="at most this many faults (0: no limit)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each pack response")
    ap.add_argument("--put-delay", type=float, default=0.0, help="seconds before each pack upload is passed on")
    ap.add_argument("--on-relist", default="", help="a shell command run before the second refs/ listing")
    args = ap.parse_args()
    stats = {"requests": 0, "pack_requests": 0, "pack_bytes": 0, "faults": 0, "refs_listings": 0}
    session: aiohttp.ClientSession | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal session
        if request.path == "/_stats":
            return web.json_response(stats)
        stats["requests"] += 1
        if session is None:
            session = aiohttp.ClientSession(auto_decompress=False)
        is_tree = "/trees/" in request.path or "/manifests/tree-" in request.path  # a folder's, or a registry's
        if (args.fault, is_tree, "/trust/" in request.path) in (
            ("bloat", True, False),
            ("bloat-trust", False, True),
        ):
            return await _endless(request)
        if args.fault == "garbage":  # a hostile server: random bytes, 200, for every request
            return web.Response(body=os.urandom(4096), content_type="application/octet-stream")
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        await _relist_hook(request)
        # "/packs/" anywhere: under a bucket and prefix too (an S3 path-style URL); a registry's blobs read by range
        is_pack = request.method == "GET" and (
            ("/packs/" in request.path and not request.path.endswith(".idx"))
            or ("/blobs/sha256:" in request.path and "range" in {k.lower() for k in request.headers})
        )
        fault = "none"
        if is_pack:
            stats["pack_requests"] += 1
            under_limit = not args.limit or stats["faults"] < args.limit
            if args.fault != "none" and stats["pack_requests"] % args.every == 0 and under_limit:
                fault = args.fault
                stats["faults"] += 1
            if args.delay:
                await asyncio.sleep(args.delay)
            if fault == "norange":
                headers.pop("Range", None)
                headers.pop("range", None)
        body_in = await request.read()
        if args.put_delay and request.method == "PUT" and "/packs/" in request.path:
            await asyncio.sleep(args.put_delay)
        async with session.request(
            request.method, args.upstream + request.path_qs, headers=headers, data=body_in or None
        ) as up:
            body = await up.read()
        if is_pack and up.status in (200, 206):
            stats["pack_bytes"] += len(body)
        if fault == "500":
            return web.Response(status=500, text="injected\n")
        if fault in S3_ERRORS:  # as an object store says it: a status and an XML error with its code
            status, code = S3_ERRORS[fault]
            return web.Response(
                status=status,
                content_type="application/xml",
                text=f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>",
            )
        if fault == "flip" and body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0x10
            body = bytes(body)
        kept = ("content-range", "content-type", "docker-content-digest", "www-authenticate", "link", "etag")
        out_headers = {k: v for k, v in up.headers.items() if k.lower() in kept}
        if fault == "drop":  # the connection closes before any response
            request.transport.close()
            return web.Response(status=500)
        if fault == "reset":  # closed with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox does
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(status=500)
        if fault == "silent":  # the request is taken and never answered: not even a status line
            await asyncio.sleep(3600)
        if fault in ("truncate", "stall"):
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            if fault == "stall":
                await asyncio.sleep(3600)
            request.transport.close()  # the rest of the announced body never comes
            return resp
        return web.Response(status=up.status, body=body, headers=out_headers)

    async def _relist_hook(request: web.Request) -> None:
        if request.query.get("list") != "refs/":
            return
        stats["refs_listings"] += 1
        if args.on_relist and stats["refs_listings"] == 2:
            proc = await asyncio.create_subprocess_shell(args.on_relist)
            await proc.wait()

    async def _endless(request: web.Request) -> web.StreamResponse:
        """Zeros without end (2 GB, chunked: no length announced) where a small document should be."""
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        block = bytes(1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(2048):
                await resp.write(block)
        return resp

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main()
