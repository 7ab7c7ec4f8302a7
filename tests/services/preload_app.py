"""An ASGI app for gunicorn ``--preload``: the master starts pulling its model in a thread while it imports
the app, then forks its workers, each of which must get the model on its own.

    CAS_REMOTE=http://127.0.0.1:8000 gunicorn --preload -w 2 -k uvicorn.workers.UvicornWorker preload_app:app

/files   waits for the model, then answers with each file's sha256 and the worker's pid
"""

import hashlib
import os
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import descriptor


class Models:
    encoder = descriptor.Model("encoder:latest")


# What a preloading master does to start fast: the pull begins before the workers exist.
threading.Thread(target=descriptor.prefetch, args=(Models,), daemon=True).start()


def digests() -> dict[str, str]:
    root = Models().encoder.path  # in a worker: resolved there, whatever the master's thread was doing
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


async def files(request: Request) -> JSONResponse:
    import asyncio

    return JSONResponse({"pid": os.getpid(), "files": await asyncio.to_thread(digests)})


app = Starlette(routes=[Route("/files", files)])
