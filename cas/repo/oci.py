"""An OCI registry as a repository: ``oci://HOST[:PORT]/NAMESPACE`` (the CNCF distribution registry, Harbor,
GHCR, ECR, Artifact Registry, Quay, Artifactory).

Where each key lives is ``ocilayout``'s; the transport, authentication and
bounds are ``registry``'s.  A version is a tag of its model's registry
repository whose manifest references everything the version needs
(mounted there from the pool, never sent twice), so the registry's garbage
collection and replication keep a version whole.  Reads go through the
pool, which a prune keeps current.

A registry has no conditional write, so the two writes that must not race
are settled instead: a ref (and a trust root or role) is tagged only if the
tag is absent, then read back after ``CAS_REGISTRY_SETTLE`` seconds (0.5);
of racing pushes the one whose manifest the tag holds then has won, and the
others see it and report the version taken.  A document's update is written
only if the tag still holds what it was read from, and read back likewise;
when another writer's manifest is there, the change is applied again to
what that writer left (as S3's ``If-Match`` retries do).  Both are safe
when no writer takes longer than the settle time between its last check
and its write (one round trip); docs/repositories.md says so.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import random
from collections.abc import Awaitable
from typing import TypeVar

from ..content import ref
from ..content.tags import validate_name, validate_version
from ..errors import InvalidManifest, InvalidTag, NotFound, RepoError
from ..system.envflags import env_seconds
from . import CONCURRENCY
from . import ocilayout as layout
from .backend import Change
from .format import MAX_DOC_BYTES, check_key, decode_locator, locator_key, pack_key, tree_key
from .listing import decode_names, names_key
from .ocilayout import Manifest, Place, place
from .registry import Blob, Registry, digest_of
from .registryauth import credentials_for

T = TypeVar("T")
SETTLE = 0.5  # seconds a contested tag is given before it is read back (CAS_REGISTRY_SETTLE)
UPDATE_TRIES = 20
_IMMUTABLE = frozenset({"tree", "pack", "index"})  # content-addressed and never rewritten: their blobs are cached
_EXCLUSIVE = frozenset({"ref", "trust-root", "trust-role"})  # created once, by one writer of several


class OciBackend:
    def __init__(self, url: str, *, concurrency: int = CONCURRENCY):
        self._where = layout.parse_url(url)
        self.url = self._where.url
        self._registry = Registry(self._where.base, credentials=credentials_for(self._where.host),
                                  concurrency=concurrency)  # fmt: skip
        self._pool = layout.pool_repository(self._where.namespace)
        self._settle = env_seconds("CAS_REGISTRY_SETTLE", SETTLE, low=0, high=60)
        self._blobs: dict[str, Blob] = {}  # immutable key -> its blob in the pool
        self._empty: Blob | None = None
        self._slots = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self._registry.close()

    # reading

    async def get(self, key: str, limit: int = MAX_DOC_BYTES) -> bytes:
        repo, blob = await self._find(key)
        if blob.size > limit:
            raise RepoError(f"{self.url}/{key} is {blob.size} bytes, more than the {limit} it may have; refused")
        return await self._registry.get_blob(repo, blob.digest, limit)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        repo, blob = await self._find(key)
        if end > blob.size:
            raise RepoError(f"{self.url}/{key}: range {start}-{end} lies past its {blob.size} bytes")
        return await self._registry.get_range(repo, blob.digest, start, end)

    async def _find(self, key: str) -> tuple[str, Blob]:
        """The registry repository and blob holding ``key``'s bytes (a ref's is its manifest's config)."""
        if key in self._blobs:
            return self._pool, self._blobs[key]
        where = place(self._where.namespace, key)
        manifest = await self._manifest(where, key)
        if check_key(key)[0] == "ref":
            return where.repository, manifest.config
        blob = manifest.layers.get(key)
        if blob is None:
            raise InvalidManifest(f"{self.url}: the manifest of {key} has no layer holding it; refused")
        if check_key(key)[0] in _IMMUTABLE:
            self._blobs[key] = blob
        return where.repository, blob

    async def _manifest(self, where: Place, key: str) -> Manifest:
        try:
            body, _ = await self._registry.get_manifest(where.repository, where.tag)
        except NotFound:
            raise NotFound(f"{key} is not in the repository {self.url}") from None
        return self._checked(body, key)

    def _checked(self, body: bytes, key: str) -> Manifest:
        try:
            return layout.read_manifest(body, key)
        except InvalidManifest as e:
            raise InvalidManifest(f"{self.url}: {e}") from None

    async def list(self, prefix: str) -> list[str]:
        if prefix.startswith("refs/"):
            return sorted(await self._refs(prefix))
        tags = await self._registry.tags(self._pool)
        return sorted(k for t in tags if (k := layout.key_of_tag(t)) is not None and k.startswith(prefix))

    async def _refs(self, prefix: str) -> builtins.list[str]:
        """The refs under ``refs/`` (every listed name's) or ``refs/<name>/``: the tags of model repositories."""
        names = [prefix.split("/")[1]] if prefix.count("/") >= 2 else await self._names()
        keys = []
        for n in names:
            tags = await self._registry.tags(layout.model_repository(self._where.namespace, n))
            keys += [f"refs/{n}/{t}" for t in tags if _is_version(t)]  # not tags other tools put there
        return keys

    async def _names(self) -> builtins.list[str]:
        """The models here: the names listing's, and the registry's catalog's where it is open (a push killed
        before its listing was written still created its repository)."""
        try:
            names = set(decode_names(await self.get(names_key())))
        except NotFound:
            names = set()
        prefix = f"{self._where.namespace}/" if self._where.namespace else ""
        for repository in await self._registry.catalog() or []:
            name = repository[len(prefix) :] if repository.startswith(prefix) else ""
            if name and "/" not in name and _is_name(name):
                names.add(name)
        return sorted(names)

    # writing

    async def create(self, key: str, data: bytes | bytearray) -> bool:
        kind = check_key(key)[0]
        if kind == "ref":
            return await self._create_ref(key, data)
        where = place(self._where.namespace, key)
        if kind not in _EXCLUSIVE and await self._registry.manifest_digest(where.repository, where.tag):
            return False  # content-addressed: the same bytes are there
        blob = await self._registry.put_blob(self._pool, data)
        body = layout.object_manifest(key, await self._empty_blob(), blob, _nonce() if kind in _EXCLUSIVE else "")
        if kind in _EXCLUSIVE:
            return await self._tag_once(where, body)
        await self._registry.put_manifest(where.repository, where.tag, body)
        if kind in _IMMUTABLE:
            self._blobs[key] = blob
        return True

    async def _create_ref(self, key: str, data: bytes | bytearray) -> bool:
        """Mount what the version needs into its model's repository, then tag its manifest there once."""
        _, name, version = check_key(key)
        info = ref.decode(bytes(data), name=name, version=version)
        where = place(self._where.namespace, key)
        if await self._registry.manifest_digest(where.repository, where.tag):
            return False
        layers = await self._needed(info.root)
        await asyncio.gather(*(self._mount(where.repository, blob) for _, blob in layers))
        config = await self._registry.put_blob(where.repository, data)
        return await self._tag_once(where, layout.version_manifest(key, config, info.root, info.created, layers))

    async def _needed(self, root: str) -> builtins.list[tuple[str, Blob]]:
        """The tree, the locator and every pack a root's chunks lie in, with their blobs in the pool."""
        packs = sorted({loc.pack_id for loc in decode_locator(await self.get(locator_key(root))).values()})
        keys = [tree_key(root), locator_key(root), *(pack_key(p) for p in packs)]
        blobs = await asyncio.gather(*(self._bounded(self._find(k)) for k in keys))
        return [(k, blob) for k, (_, blob) in zip(keys, blobs)]

    async def _mount(self, repository: str, blob: Blob) -> None:
        """A pool blob linked into a model repository; sent there when the registry will not mount it."""
        async with self._slots:
            if await self._registry.mount(repository, blob.digest, self._pool):
                return
            data = await self._registry.get_blob(self._pool, blob.digest, blob.size)
            await self._registry.put_blob(repository, data)

    async def _relayer(self, root: str) -> None:
        """Point every version of ``root`` at the packs its locator names now, so the registry's garbage
        collection frees the packs a prune repacked (their pool tags are gone, their manifests kept them)."""
        for key in await self._refs("refs/"):
            where = place(self._where.namespace, key)
            try:
                manifest = await self._manifest(where, key)
            except NotFound:
                continue  # removed meanwhile
            if manifest.root != root:
                continue
            layers = await self._needed(root)
            await asyncio.gather(*(self._mount(where.repository, blob) for _, blob in layers))
            info = ref.decode(await self.get(key), name=key.split("/")[1], version=where.tag)
            body = layout.version_manifest(key, manifest.config, root, info.created, layers)
            await self._registry.put_manifest(where.repository, where.tag, body)

    async def _tag_once(self, where: Place, body: bytes) -> bool:
        """Tag ``body`` if the tag is free, and say whether the tag holds it once racing writers have settled."""
        if await self._registry.manifest_digest(where.repository, where.tag):
            return False
        digest = await self._registry.put_manifest(where.repository, where.tag, body)
        await asyncio.sleep(self._settle)
        return await self._registry.manifest_digest(where.repository, where.tag) == digest

    async def update(self, key: str, change: Change) -> None:
        where = place(self._where.namespace, key)
        for _ in range(UPDATE_TRIES):
            read, current = await self._document(where, key)
            new = change(current)
            if new is None:
                return
            if await self._write_over(where, key, read, new):
                if check_key(key)[0] == "locator":  # a prune moved chunks to new packs
                    await self._relayer(check_key(key)[1])
                return
            await asyncio.sleep(self._settle * random.random())  # another writer's manifest won: again
        raise RepoError(f"{self.url}/{key} changed under this write {UPDATE_TRIES} times in a row; try again")

    async def _document(self, where: Place, key: str) -> tuple[str | None, bytes | None]:
        """The digest of the manifest a document's tag holds, and the document; (None, None) when absent."""
        try:
            body, digest = await self._registry.get_manifest(where.repository, where.tag)
            blob = self._checked(body, key).layers.get(key)
            if blob is None:
                raise InvalidManifest(f"{self.url}: the manifest of {key} has no layer holding it; refused")
            return digest, await self._registry.get_blob(where.repository, blob.digest, MAX_DOC_BYTES)
        except NotFound:
            return None, None

    async def _write_over(self, where: Place, key: str, read: str | None, new: bytes) -> bool:
        """Write ``new`` if the tag still holds the manifest read; True when it holds ours once settled."""
        blob = await self._registry.put_blob(self._pool, new)
        body = layout.object_manifest(key, await self._empty_blob(), blob, _nonce())
        if await self._registry.manifest_digest(where.repository, where.tag) != read:
            return False
        digest = await self._registry.put_manifest(where.repository, where.tag, body)
        await asyncio.sleep(self._settle)
        if await self._registry.manifest_digest(where.repository, where.tag) != digest:
            return False
        return True

    async def attach(self, ref_key: str, key: str, data: bytes) -> None:
        """The signed document ``key`` as a referrer of the version's manifest: by the referrers API where the
        registry has it, else listed in the ``sha256-<hex>`` index tag, as oras and cosign look for it."""
        where = place(self._where.namespace, ref_key)
        body, digest = await self._registry.get_manifest(where.repository, where.tag)
        document = await self._registry.put_blob(where.repository, data)
        empty = await self._registry.put_blob(where.repository, layout.EMPTY)
        referrer = layout.signature_manifest(Blob(digest, len(body)), empty, key, document)
        if not await self._registry.put_referrer(where.repository, referrer):  # no referrers API: the index tag
            await self._list_referrer(Place(where.repository, layout.referrers_tag(digest)), referrer, key)

    async def _list_referrer(self, index: Place, referrer: bytes, key: str) -> None:
        """Add a referrer to the fallback index, written over what was read and read back, as documents are."""
        entry = Blob(digest_of(referrer), len(referrer))
        for _ in range(UPDATE_TRIES):
            try:
                current, read = await self._registry.get_manifest(index.repository, index.tag, layout.INDEX)
            except NotFound:
                current, read = None, None
            new = layout.with_referrer(current, entry, layout.SIGNATURE_TYPE, {layout.KEY: key})
            if new is None:
                return
            if await self._registry.manifest_digest(index.repository, index.tag, layout.INDEX) != read:
                continue
            written = await self._registry.put_manifest(index.repository, index.tag, new, layout.INDEX)
            await asyncio.sleep(self._settle)
            if await self._registry.manifest_digest(index.repository, index.tag, layout.INDEX) == written:
                return
        raise RepoError(f"{self.url}: the referrers index {index.tag} of {index.repository} kept changing; sign again")

    async def delete(self, key: str) -> None:
        where = place(self._where.namespace, key)
        digest = await self._registry.manifest_digest(where.repository, where.tag)
        if digest is not None:
            await self._registry.delete_manifest(where.repository, digest)
        self._blobs.pop(key, None)

    async def _empty_blob(self) -> Blob:
        """The empty config every pool manifest names, uploaded to the pool once."""
        if self._empty is None:
            self._empty = await self._registry.put_blob(self._pool, layout.EMPTY)
        return self._empty

    async def _bounded(self, work: Awaitable[T]) -> T:
        async with self._slots:
            return await work


def _is_version(tag: str) -> bool:
    try:
        validate_version(tag)
    except InvalidTag:
        return False
    return True


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidTag:
        return False
    return True


def _nonce() -> str:
    return os.urandom(8).hex()
