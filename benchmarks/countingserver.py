"""A static file server that counts what it serves: the same byte counter for cas and a peer.

``python -m benchmarks.countingserver FOLDER PORT`` answers GET and HEAD (with ``Range``) for the files
under FOLDER, as nginx would, and ``GET /_stats`` with the requests and body bytes served so far;
``POST /_reset`` zeroes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def app(folder: Path) -> web.Application:
    root = folder.resolve()
    stats = {"requests": 0, "bytes": 0}

    async def serve(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return web.Response(status=404)
        stats["requests"] += 1
        return web.FileResponse(path)

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        """Each file's body as sent (a range's length), known once its headers are ready."""
        if isinstance(response, web.FileResponse) and request.method == "GET":
            stats["bytes"] += response.content_length or 0

    async def served(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(request: web.Request) -> web.Response:
        stats.update(requests=0, bytes=0)
        return web.json_response(stats)

    a = web.Application()
    a.on_response_prepare.append(count)
    a.router.add_get("/_stats", served)
    a.router.add_post("/_reset", reset)
    a.router.add_get("/{path:.+}", serve)
    return a


if __name__ == "__main__":
    web.run_app(app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), print=None)
