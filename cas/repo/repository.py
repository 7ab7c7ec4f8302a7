"""A repository as cas reads and writes it: refs, trees, locators and packs over a backend.

Writes go bottom-up: packs, then the index naming each pack's chunks, then
the tree and its locator, then the listings (``listing``), and the ref last,
created only if absent; reads go top-down from the listings and the ref.
So a reader never sees a ref whose data is missing, whatever interrupted a
writer: what it leaves (a pack without an index, a listed version without
a ref) no ref reaches, and readers skip it.  Two hosts pushing one version
with different content: one creates the ref, the other gets a clear error.
Every document read is validated: it may come from a hostile server.
Removal runs the other way, top-down: ``remove_ref`` records the removal in
the prune marks, then deletes the ref, then updates the listings; what the
ref reached goes with a later prune (``cas.sync.prune``), which a push keeps off
what it reuses with ``reserve``.

Opening one: ``with_repository`` on the running loop, ``run_with_repository``
from any thread (a private loop, see ``eventloop``).  ``CAS_OFFLINE=1``
refuses to open any.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..content import ref, tags
from ..content.ref import ModelInfo
from ..content.tree import Tree
from ..content.tree import decode as decode_tree
from ..errors import CasError, CorruptObject, InvalidManifest, NotFound
from ..system import eventloop
from ..system.envflags import env_flag
from . import CONCURRENCY, listing, marks
from .backend import Attaching, WriteBackend
from .format import (
    Location,
    check_key,
    decode_index,
    decode_locator,
    encode_locator,
    index_key,
    locator_key,
    marks_key,
    pack_key,
    ref_key,
    tree_key,
)
from .marks import Marks
from .stores import open_backend

T = TypeVar("T")
REFS_AT_ONCE = 1000  # refs read at once when listing versions


class Repository:
    """The documents of one repository, read and written through its backend."""

    def __init__(self, backend: WriteBackend):
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    async def close(self) -> None:
        await self.backend.close()

    # -- reading ----------------------------------------------------------------

    async def ref(self, tag: str | tags.Tag) -> ModelInfo:
        """A tag's ref here; ``latest`` is the newest version here."""
        t = tags.parse(tag)
        if not t.is_latest:
            found = await self._ref(t.name, t.version)
            if found is None:
                raise NotFound(f"model {t} is not in the repository {self.url}")
            return found
        listed = await self._listed(t.name)
        for version in sorted(listed, key=lambda v: (listed[v], v), reverse=True):
            found = await self._ref(t.name, version)
            if found is not None:  # a version listed by a push that has not created its ref is skipped
                return found
        raise NotFound(f"model {t.name} has no version in the repository {self.url}")

    async def _ref(self, name: str, version: str) -> ModelInfo | None:
        try:
            return await self._document(ref_key(name, version), lambda d: ref.decode(d, name=name, version=version))
        except NotFound:
            return None

    async def document(self, key: str, limit: int) -> bytes:
        """A document's bytes as stored, refused past ``limit`` bytes (the signed trust documents)."""
        return await self.backend.get(key, limit=limit)

    async def _document(self, key: str, decode: Callable[[bytes], T]) -> T:
        """A document of the repository, decoded; one that does not decode names the repository and the key."""
        return self._decoded(key, await self.backend.get(key), decode)

    def _decoded(self, key: str, data: bytes, decode: Callable[[bytes], T]) -> T:
        try:
            return decode(data)
        except InvalidManifest as e:
            raise InvalidManifest(f"{self.url}/{key}: {e}; the repository is damaged, or it is not a cas "
                                  "repository") from None  # fmt: skip

    async def versions(self, name: str | None = None) -> list[ModelInfo]:
        """Every version here (of ``name``), newest first in the repository's order (the one ``latest``
        follows); a listed version without a ref is skipped."""
        out: list[tuple[float, str, ModelInfo]] = []
        for n in [name] if name is not None else await self._names():
            listed = await self._listed(n)
            versions = list(listed)
            for start in range(0, len(versions), REFS_AT_ONCE):  # memory stays bounded, however long the listing
                refs = await asyncio.gather(*(self._ref(n, v) for v in versions[start : start + REFS_AT_ONCE]))
                out += [(listed[r.version], r.version, r) for r in refs if r is not None]
        return [info for *_, info in sorted(out, key=lambda o: o[:2], reverse=True)]

    async def _names(self) -> list[str]:
        try:
            return await self._document(listing.names_key(), listing.decode_names)
        except NotFound:  # a repository written before listings: its folders, where the store can list them
            return sorted({k.split("/")[1] for k in await self._listed_refs("refs/")})

    async def _listed(self, name: str) -> dict[str, float]:
        """The versions of ``name`` the listing names, with their creation times."""
        try:
            return await self._document(listing.versions_key(name), listing.decode_versions)
        except NotFound:
            refs = [await self._ref(*k.split("/")[1:]) for k in await self._listed_refs(f"refs/{name}/")]
            return {r.version: r.created for r in refs if r is not None}

    async def _listed_refs(self, prefix: str) -> list[str]:
        try:
            keys = await self.backend.list(prefix)
        except CasError:
            return []  # a store that cannot list, and no listing document: nothing is known here
        return [k for k in keys if len(k.split("/")) == 3 and not k.split("/")[2].startswith(".")]

    async def tree(self, info: ModelInfo) -> tuple[Tree, bytes]:
        """The tree ``info`` names, checked against its root and its ref; also its encoded bytes."""
        encoded = await self.backend.get(tree_key(info.root))
        tree = self._decoded(tree_key(info.root), encoded, lambda d: decode_tree(d, info.root))
        if tree.size != info.size or len(tree.files) != info.file_count:
            raise CorruptObject(f"{info.tag} in {self.url}: its ref and its tree disagree on size or file count")
        return tree, encoded

    async def locator(self, root: str) -> dict[bytes, Location]:
        return await self._document(locator_key(root), decode_locator)

    async def packs(self) -> tuple[set[str], set[str]]:
        """The ids of the packs here, and of the packs with an index (what a push has finished)."""
        names = [k[len("packs/") :] for k in await self.backend.list("packs/")]
        return {n for n in names if "." not in n}, {n.removesuffix(".idx") for n in names if n.endswith(".idx")}

    async def pack_index(self, pack_id: str) -> bytes:
        """A pack's index document, encoded (decode with ``format.decode_index``)."""
        return await self.backend.get(index_key(pack_id))

    async def read(self, pack_id: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of a pack."""
        return await self.backend.get_range(pack_key(pack_id), start, end)

    # -- writing, bottom-up -------------------------------------------------------

    async def put_pack(self, pack_id: str, data: bytes | bytearray, index: bytes) -> None:
        """A pack, then its index: a listed index always names a whole pack."""
        await self.backend.create(pack_key(pack_id), data)
        await self.backend.create(index_key(pack_id), index)

    async def put_tree(self, root: str, encoded: bytes, locations: dict[bytes, Location]) -> None:
        """A tree and its locator; every pack the locator names must be written already."""
        await self.backend.create(tree_key(root), encoded)
        await self.backend.create(locator_key(root), encode_locator(locations))

    async def check_version_free(self, info: ModelInfo) -> None:
        """Refuse to push a version that holds other content here (the same content is a no-op push)."""
        existing = await self._ref(info.name, info.version)
        if existing is not None and existing.root != info.root:
            raise CasError(f"{info.tag} already exists in {self.url} with other content (root "
                           f"{existing.root[:12]}); push under a new version")  # fmt: skip

    async def put_ref(self, info: ModelInfo) -> bool:
        """The listings, then the ref, created only if absent: its tree, locator and packs must be written
        already.  The same content there already is a no-op (False); other content there is refused."""
        await self.backend.update(listing.versions_key(info.name),
                                  lambda data: listing.with_version(data, info.version, info.created))  # fmt: skip
        await self.backend.update(listing.names_key(), lambda data: listing.with_name(data, info.name))
        if await self.backend.create(ref_key(info.name, info.version), info.encode()):
            return True
        await self.check_version_free(info)
        return False

    async def attach_signature(self, tag: tags.Tag, key: str, document: bytes) -> None:
        """Show a signed document beside the version it signs, where the store has such a place (a registry's
        referrers); the document itself is already stored under ``key``."""
        if isinstance(self.backend, Attaching):
            await self.backend.attach(ref_key(tag.name, tag.version), key, document)

    # -- removing (rm --remote, and prune's deletions) ---------------------------

    async def marks(self) -> Marks:
        """The prune marks (``marks``); none yet is empty."""
        try:
            return await self._document(marks_key(), marks.decode)
        except NotFound:
            return marks.EMPTY

    async def reserve(self, keys: set[str]) -> set[str]:
        """Unmark what a push is about to reuse, so no prune deletes it; returns the keys it must not reuse: those
        a prune is deleting, and the packs gone since the push listed them (a prune deleted them meanwhile)."""
        seen: list[Marks] = []

        def change(data: bytes | None) -> bytes | None:
            seen[:] = [self._decoded(marks_key(), data, marks.decode)] if data is not None else []
            return marks.reserved(data, keys)

        await self.backend.update(marks_key(), change)
        if not seen:  # no prune has ever written marks here: nothing was deleted
            return set()
        packs, indexed = await self.packs()
        gone = {k for k in keys if check_key(k)[0] == "pack" and k[len("packs/") :] not in packs & indexed}
        return (keys & set(seen[0].deleting)) | gone

    async def remove_ref(self, info: ModelInfo, when: float) -> None:
        """Remove a ref: its root is recorded as removed (live for a prune's grace period, for pulls that read the
        ref just before), then the ref goes, then its version leaves the listings."""
        await self.backend.update(marks_key(), lambda data: marks.with_removed(data, [info.root], when))
        await self.backend.delete(ref_key(info.name, info.version))
        await self.backend.update(listing.versions_key(info.name),
                                  lambda data: listing.without_version(data, info.version))  # fmt: skip
        if not await self._listed(info.name):
            await self.backend.update(listing.names_key(), lambda data: listing.without_name(data, info.name))
            if await self._listed(info.name):  # a push added a version meanwhile, and found the name listed
                await self.backend.update(listing.names_key(), lambda data: listing.with_name(data, info.name))

    async def delete(self, key: str) -> None:
        """Delete one object of the layout (a prune's, after its grace period)."""
        await self.backend.delete(key)


def indexed_chunks(pack_id: str, index: bytes) -> list[tuple[bytes, Location]]:
    """Where each chunk of a pack lies, from its index."""
    _, entries = decode_index(index)
    return [(e.chunk_id, Location(pack_id, e.offset, e.length)) for e in entries]


def remote_url(remote: str | None) -> str:
    """The repository to use: ``remote``, else ``$CAS_REMOTE``; refused when ``CAS_OFFLINE`` is set."""
    url = remote or os.environ.get("CAS_REMOTE")
    if not url:
        raise CasError("no repository given: pass remote=URL (--remote URL) or set CAS_REMOTE")
    if env_flag("CAS_OFFLINE", False):
        raise CasError(f"CAS_OFFLINE is set, so the repository {url} was not contacted; unset CAS_OFFLINE to use it")
    return url


def token() -> str | None:
    """The bearer token for the repository (``$CAS_TOKEN``)."""
    return os.environ.get("CAS_TOKEN") or None


async def with_repository(work: Callable[[Repository], Awaitable[T]], url: str, concurrency: int = CONCURRENCY,
                          *, creating: bool = False) -> T:  # fmt: skip
    """Run ``work(repository)`` on the running loop, its connections closed afterwards; ``creating``: the work
    may start the repository (see ``open_backend``)."""
    repo = Repository(open_backend(url, token=token(), concurrency=concurrency, creating=creating))
    try:
        return await work(repo)
    finally:
        await repo.close()


def run_with_repository(work: Callable[[Repository], Awaitable[T]], url: str, concurrency: int = CONCURRENCY,
                        *, creating: bool = False) -> T:  # fmt: skip
    """Run ``work(repository)`` to completion on a private loop: works from any thread, loop or not."""
    return eventloop.run(lambda: with_repository(work, url, concurrency, creating=creating))


def list_remote(remote: str | None = None, name: str | None = None) -> list[ModelInfo]:
    """The models in a repository (``$CAS_REMOTE`` by default), newest first."""
    if name is not None:
        tags.validate_name(name)
    return run_with_repository(lambda repo: repo.versions(name), remote_url(remote))
