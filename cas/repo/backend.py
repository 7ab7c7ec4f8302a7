"""The backend contract every repository store meets, and how a URL picks one.

Keys are the repository layout's paths (``refs/m/v1``, ``packs/<id>``; see
``format``).  A ``ReadBackend`` is enough to pull from (any static web
server or CDN qualifies); a ``WriteBackend`` can also be pushed to and pruned.

- ``get(key, limit=MAX_DOC_BYTES)`` returns the whole object, refusing one past
  ``limit`` bytes, however much the store sends (only documents are read whole); a missing key raises ``NotFound``; any
  other failure, after the backend's own retries, raises ``RepoError``.
- ``get_range(key, start, end)`` returns exactly the bytes ``start`` up to
  ``end`` (exclusive), or raises; never more, whatever the server sends.
- ``list(prefix)`` returns every key under ``prefix`` (a folder path ending
  in ``/``), sorted, names starting with ``.`` left out; no such folder is
  an empty list; a store that cannot list (a static server) raises
  ``RepoError``.  Reading a model never needs it (see ``listing``).
- ``create(key, data)`` stores ``data`` whole under ``key`` unless the key
  exists, atomically: of two racing creations exactly one returns True
  (S3 ``If-None-Match: *``, a hard link, ``cas serve``'s check).
- ``update(key, change)`` replaces a small mutable document by
  compare-and-set: ``change(current or None)`` gives the new bytes, or None
  for nothing to write, and is called again when another writer changed
  the key in between (S3 ``If-Match``, an ETag, a lock).
- ``delete(key)`` removes ``key``; a key already gone is fine (a prune
  killed midway deletes again).  Only ``rm --remote`` and ``prune`` delete,
  and only objects no ref reaches any more (refs themselves for ``rm``); a
  store that takes no writes (a static server) refuses in one line that
  says removal needs a writable repository and its token.
- ``close()`` releases connections; the backend is not used afterwards.

The stores: ``file``, ``http`` (aiohttp), ``s3`` (aiobotocore, the ``s3``
extra); ``stores.open_backend`` picks one for a URL and imports it only then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


class ReadBackend(Protocol):
    url: str

    async def get(self, key: str, limit: int = ...) -> bytes: ...
    async def get_range(self, key: str, start: int, end: int) -> bytes: ...
    async def list(self, prefix: str) -> list[str]: ...
    async def close(self) -> None: ...


Change = Callable[[bytes | None], bytes | None]


class WriteBackend(ReadBackend, Protocol):
    async def create(self, key: str, data: bytes | bytearray) -> bool: ...
    async def update(self, key: str, change: Change) -> None: ...
    async def delete(self, key: str) -> None: ...


@runtime_checkable
class Attaching(Protocol):
    """A store that shows a version's signatures beside it, where the store's own tooling looks (a registry's
    referrers): ``attach(ref key, document key, document)``."""

    async def attach(self, ref: str, key: str, data: bytes) -> None: ...
