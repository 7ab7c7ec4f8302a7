"""The backend contract every repository store meets, and how a URL picks one.

Keys are the repository layout's paths (``refs/m/v1``, ``packs/<id>``; see
``format``).  A ``ReadBackend`` is enough to pull from (any static web
server qualifies); a ``WriteBackend`` can also be pushed to.  Contract:

- ``get(key)`` returns the whole object, refusing one past ``MAX_DOC_BYTES``
  (only documents are read whole); a missing key raises ``NotFound``; any
  other failure, after the backend's own retries, raises ``RepoError``.
- ``get_range(key, start, end)`` returns exactly the bytes ``start`` up to
  ``end`` (exclusive), or raises; never more, whatever the server sends.
- ``list(prefix)`` returns every key under ``prefix`` (a folder path ending
  in ``/``), sorted, names starting with ``.`` left out; no such folder is
  an empty list.
- ``put(key, data, replace=False)`` stores ``data`` whole or not at all;
  without ``replace`` an existing key is left as it is (objects named by
  their content), with it the key is overwritten (refs).
- ``close()`` releases connections; the backend is not used afterwards.

The file backend lives in ``file``, the HTTP one in ``http`` (aiohttp is
imported only there, and only when a repository is really used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from ..errors import RepoError
from . import CONCURRENCY


class ReadBackend(Protocol):
    url: str

    async def get(self, key: str) -> bytes: ...
    async def get_range(self, key: str, start: int, end: int) -> bytes: ...
    async def list(self, prefix: str) -> list[str]: ...
    async def close(self) -> None: ...


class WriteBackend(ReadBackend, Protocol):
    async def put(self, key: str, data: bytes, *, replace: bool = False) -> None: ...


def open_backend(url: str, *, token: str | None = None, concurrency: int = CONCURRENCY) -> WriteBackend:
    """The backend for ``file://PATH`` (or a plain path) or ``http(s)://HOST[:PORT][/PREFIX]``."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        from .http import HttpBackend

        return HttpBackend(url, token=token, concurrency=concurrency)
    from .file import FileBackend

    if parsed.scheme == "file":
        return FileBackend(Path(unquote(parsed.path)))
    if parsed.scheme == "" and url:
        return FileBackend(Path(url))
    raise RepoError(f"repository URL {url!r} is not supported; use file://PATH or http(s)://HOST[:PORT]/[PREFIX]")
