"""An ASGI app that pulls its model in the background and stays live meanwhile.

    CAS_REMOTE=http://127.0.0.1:8000 uvicorn asgi_app:app

/healthz  liveness: answers at once, during the pull too (Kubernetes kills a pod whose probe stalls)
/readyz   readiness: 503 until the model is on disk, then 200 with its version
/digest   needs the model: waits for it, then answers
"""

import asyncio
import contextlib
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import descriptor


class Models:
    encoder = descriptor.Model("encoder:latest")


models = Models()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    app.state.loading = asyncio.ensure_future(descriptor.aprefetch(models))  # the server starts serving now
    yield
    app.state.loading.cancel()  # a shutdown mid-pull stops it, once unwound; the next start resumes it
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await app.state.loading


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def readyz(request: Request) -> JSONResponse:
    loading = request.app.state.loading
    if not loading.done():
        return JSONResponse({"ready": False}, status_code=503)
    failed = "cancelled" if loading.cancelled() else loading.exception()
    if failed:
        return JSONResponse({"ready": False, "error": str(failed)}, status_code=500)
    return JSONResponse({"ready": True, "model": models.encoder.tag})


async def digest(request: Request) -> JSONResponse:
    await asyncio.shield(request.app.state.loading)  # waits; a client giving up does not cancel the pull
    weights = models.encoder.path_of("model.safetensors")
    return JSONResponse({"model": models.encoder.tag, "sha256": await asyncio.to_thread(sha256, weights)})


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


app = Starlette(
    routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/digest", digest)],
    lifespan=lifespan,
)
