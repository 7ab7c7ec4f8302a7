"""A local stand-in for the Hugging Face Hub's download API, so ``huggingface_hub`` can be measured offline.

``python -m benchmarks.fakehub FOLDER PORT`` serves FOLDER as the model repository ``bench/model`` at one
revision: ``GET /api/models/bench/model/revision/main`` and ``.../tree/<revision>`` (the file list that
``snapshot_download`` filters with ``allow_patterns``), ``HEAD``/``GET /bench/model/resolve/<revision>/<path>``
(the metadata and bytes ``hf_hub_download`` fetches) with the headers the Hub sends on them, and
``GET /_stats``: the file bytes served.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from aiohttp import web

REPO = "bench/model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def app(folder: Path) -> web.Application:
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    etags = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}
    stats = {"bytes": 0, "files": 0}

    async def info(request: web.Request) -> web.Response:
        siblings = [{"rfilename": name} for name in files]
        return web.json_response({"id": REPO, "sha": COMMIT, "siblings": siblings, "private": False})

    async def tree(request: web.Request) -> web.Response:
        entries = [{"type": "file", "path": name, "size": p.stat().st_size, "oid": etags[name]}
                   for name, p in files.items()]  # fmt: skip
        return web.json_response(entries)

    async def resolve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"]
        if name not in files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etags[name]}"', "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(files[name].stat().st_size)})
        stats["bytes"] += files[name].stat().st_size
        stats["files"] += 1
        return web.FileResponse(files[name], headers=headers)

    async def served(request: web.Request) -> web.Response:
        return web.json_response(stats)

    a = web.Application()
    a.router.add_get(f"/api/models/{REPO}/revision/{{rev}}", info)
    a.router.add_get(f"/api/models/{REPO}/tree/{{rev}}", tree)
    a.router.add_route("*", f"/{REPO}/resolve/{{rev}}/{{path:.+}}", resolve)
    a.router.add_get("/_stats", served)
    return a


if __name__ == "__main__":
    web.run_app(app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), print=None)
