"""Worker processes beside a pull or a push, and how their failures cross the pipe.

Pull (``cas.sync.fetchworker``) and push (``cas.sync.pushworker``) run part of their
work in ``python -m <module>`` children that talk msgpack on stdin and
stdout.  The token travels in the environment, never in argv.  A worker
reports a failure as ``Failed`` and exits at once; the parent raises it
again under the same class, so callers and the CLI see what they would see
from in-process work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import msgpack

from ..errors import CasError, CorruptObject, InvalidManifest, NotFound, RepoError
from ..repo.repository import token
from ..system.files import write_all


class Failed(NamedTuple):
    kind: str  # the class of the error, raised again as such in the parent
    message: str
    errno: int


_ERRORS: dict[str, type[Exception]] = {c.__name__: c for c in (CasError, CorruptObject, InvalidManifest, NotFound,
                                                               RepoError)}  # fmt: skip


def failure(e: BaseException) -> Failed:
    if isinstance(e, OSError) and not isinstance(e, CasError):
        return Failed("OSError", e.strerror or str(e), e.errno or 0)
    kind = type(e).__name__ if type(e).__name__ in _ERRORS else "CasError"
    return Failed(kind, str(e) if isinstance(e, CasError) else f"{type(e).__name__}: {e}", 0)


def raised(f: Failed) -> Exception:
    return OSError(f.errno, f.message) if f.kind == "OSError" else _ERRORS.get(f.kind, CasError)(f.message)


def fail_and_exit(e: BaseException) -> NoReturn:
    """In a worker: tell the parent what failed (as ``["failed", ...]``), and exit at once, writing nothing more."""
    write_all(1, msgpack.packb(["failed", *failure(e)], use_bin_type=True))
    os._exit(1)


async def replies(proc: asyncio.subprocess.Process, unpacker: msgpack.Unpacker, last: bool, died: str) -> list[Any]:
    """Send what was written to a worker (and, when ``last``, ``["end"]``: it exits after its work), then read
    its next answers; a ``["failed", ...]`` is raised here, and a worker gone without one raises ``died``
    (formatted with its exit ``code``)."""
    assert proc.stdout is not None
    await send(proc, last)
    data = await proc.stdout.read(1 << 16)
    if not data:
        raise RepoError(died.format(code=await proc.wait()))
    unpacker.feed(data)
    answers = list(unpacker)
    for kind, *rest in answers:
        if kind == "failed":
            raise raised(Failed(*rest))
    return answers


async def send(proc: asyncio.subprocess.Process, last: bool = True) -> None:
    """Flush what was written to a worker; ``last``: end its work too (it exits once done)."""
    assert proc.stdin is not None
    if last and not proc.stdin.is_closing():
        proc.stdin.write(msgpack.packb(["end"]))
        proc.stdin.close()
    with contextlib.suppress(ConnectionError):  # a worker that died says why on stdout, read below
        await proc.stdin.drain()


class Workers:
    """Worker processes (``python -m module``), started early so their imports overlap the parent's planning."""

    def __init__(self, procs: list[asyncio.subprocess.Process]):
        self.procs = procs

    @classmethod
    async def start(cls, module: str, count: int) -> Workers:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_package_root(), os.environ.get("PYTHONPATH", "")])}
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy (byte planes) needs no BLAS threads spinning here
        env.pop("CAS_TOKEN", None)
        if token():
            env["CAS_TOKEN"] = token()  # type: ignore[assignment]
        pipe = asyncio.subprocess.PIPE
        workers = cls([])
        try:
            for _ in range(count):
                proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, stdin=pipe, stdout=pipe,
                                                            env=env)  # fmt: skip
                workers.procs.append(proc)
        except BaseException:
            await workers.close()
            raise
        return workers

    async def close(self) -> None:
        """Stop every worker still running (after a failure; after success they have exited)."""
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()


def count_from_env(name: str, most: int) -> int | None:
    """A worker count set in the environment variable ``name`` (None when unset), at most ``most``."""
    configured = os.environ.get(name)
    if not configured:
        return None
    try:
        return max(0, min(int(configured), most))
    except ValueError:
        raise CasError(f"{name}={configured!r} is not a number; unset it or give a count") from None


def spare_cores() -> int:
    """The cores this process may run on, besides the one it runs on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, cores - 1)


def _package_root() -> str:
    """The folder holding the ``cas`` package this process runs, so workers run the same code."""
    return str(Path(__file__).resolve().parents[len(__name__.split(".")) - 1])
