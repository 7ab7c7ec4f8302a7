"""Pushing a version as a ModelPack artifact, and storing any model artifact of a registry (``modelpack`` says
what the artifacts hold).

A push sends each file of the version's snapshot as a raw layer (a file
the registry holds already is not sent), then the model config, the
manifest under the version's tag, and the cas tree beside it.  An import
reads the artifact's manifest; where cas's tree is beside it, each raw file
is assembled from the chunks this cache holds (each re-hashed) and ranges
of its layer for the rest, else each layer is fetched whole and checked
against its digest; tar layers are unpacked keeping only regular files and
folders.  The files are staged inside the cache and stored with
``LocalCache.add``; a tree's root must match the one beside the artifact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, NamedTuple

from ..content import ref, tags
from ..content.digest import chunk_id
from ..content.ref import ModelInfo
from ..content.tree import FileEntry, Tree, check_path
from ..content.tree import decode as decode_tree
from ..errors import CorruptObject, InvalidInput, InvalidManifest, InvalidTag, NotFound
from ..local.cache import LocalCache
from ..local.chunkindex import Seed
from ..repo.ocilayout import EMPTY, model_repository, parse_url
from ..repo.registry import Blob, Registry
from ..repo.registryauth import credentials_for
from ..system import eventloop
from . import modelpack

AT_ONCE = 4  # files sent or fetched at once
SPAN = 8 << 20  # most bytes one range request of a layer asks


class Pushed(NamedTuple):
    info: ModelInfo
    reference: str  # HOST/REPOSITORY:VERSION, as docker, skopeo and oras name it
    digest: str
    bytes_uploaded: int


class Imported(NamedTuple):
    info: ModelInfo
    bytes_fetched: int
    bytes_reused: int


class Reference(NamedTuple):
    registry: str  # base URL
    host: str
    repository: str
    reference: str  # a tag or a digest


def parse_reference(text: str) -> Reference:
    """``[oci://]HOST[:PORT]/REPOSITORY[:TAG|@sha256:...]``, as docker and oras name an artifact."""
    rest = text.split("://", 1)[1] if "://" in text else text
    scheme = text.split("://", 1)[0] if "://" in text else "oci"
    if "@" in rest:
        name, reference = rest.split("@", 1)
    else:
        last = rest.rsplit("/", 1)[-1]
        name, reference = rest.rsplit(":", 1) if ":" in last else (rest, "latest")
    host, _, repository = name.partition("/")
    if not repository:
        raise InvalidInput(f"{text!r} names no repository; use oci://HOST[:PORT]/REPOSITORY[:TAG]")
    where = parse_url(f"{scheme}://{host}/{repository}")
    return Reference(where.base, where.host, where.namespace, reference)


def push_modelpack(cache: LocalCache, tag: str, url: str) -> Pushed:
    """Push a stored version to ``oci://HOST/NAMESPACE`` as a ModelPack artifact at ``NAMESPACE/NAME:VERSION``."""
    info = cache.whole(tag, "a push")
    tree, folder = cache.tree(info), cache.materialize(info)
    where = parse_url(url)
    repository = model_repository(where.namespace, info.name)

    async def work() -> Pushed:
        registry = Registry(where.base, credentials=credentials_for(where.host))
        try:
            return await _push(registry, repository, info, tree, folder, f"{where.host}/{repository}")
        finally:
            await registry.close()

    return eventloop.run(work)


async def _push(registry: Registry, repository: str, info: ModelInfo, tree: Tree, folder: Path,
                shown: str) -> Pushed:  # fmt: skip
    slots = asyncio.Semaphore(AT_ONCE)
    sent = 0

    async def one(entry: FileEntry) -> Blob:
        nonlocal sent
        async with slots:
            blob, was_sent = await registry.put_file(repository, folder / entry.path)
            sent += blob.size if was_sent else 0
            return blob

    blobs = await asyncio.gather(*(one(f) for f in tree.files))
    config = await registry.put_blob(repository, modelpack.config(info, list(blobs)))
    body = modelpack.manifest(info, config, [(f.path, b) for f, b in zip(tree.files, blobs)])
    await _check_free(registry, repository, info, body)
    digest = await registry.put_manifest(repository, info.version, body)
    empty, record = await registry.put_blob(repository, EMPTY), await registry.put_blob(repository, info.encode())
    encoded = tree.encode()
    tree_blob = await registry.put_blob(repository, encoded)
    side = modelpack.side_manifest(Blob(digest, len(body)), empty, record, tree_blob)
    await registry.put_manifest(repository, modelpack.side_tag(digest), side)
    return Pushed(info, f"{shown}:{info.version}", digest, sent + len(encoded))


async def _check_free(registry: Registry, repository: str, info: ModelInfo, body: bytes) -> None:
    """A version tag holding another artifact is never overwritten (the same artifact again is fine)."""
    try:
        current, _ = await registry.get_manifest(repository, info.version)
    except NotFound:
        return
    if current != body:
        raise InvalidInput(f"{info.tag} already exists in {registry.base}/{repository} with other content; push "
                           "under a new version")  # fmt: skip


def import_oci(cache: LocalCache, text: str, tag: str | None = None) -> Imported:
    """Store the model artifact ``text`` names (ModelPack, KitOps, oras files) under ``tag`` (default: the
    repository's last part, and the artifact's tag as version)."""
    target = parse_reference(text)

    async def work() -> Imported:
        registry = Registry(target.registry, credentials=credentials_for(target.host))
        try:
            return await _import(cache, registry, target, tag)
        finally:
            await registry.close()

    return eventloop.run(work)


async def _import(cache: LocalCache, registry: Registry, target: Reference, tag: str | None) -> Imported:
    shown = f"{target.host}/{target.repository}@{target.reference}"
    body, digest = await registry.get_manifest(target.repository, target.reference)
    artifact = modelpack.read_artifact(body, shown)
    known = await _side(registry, target.repository, digest, shown)
    cache.objects.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oci-import-", dir=cache.objects.tmp) as staging:
        stats = await _fetch_all(cache, registry, target.repository, artifact, known, Path(staging))
        info = await asyncio.to_thread(cache.add, staging, tag or _default_tag(target, digest),
                                       labels={"oci_reference": shown, "oci_digest": digest},
                                       created=known[0].created if known else None)  # fmt: skip
    if known and info.root != known[0].root:
        raise CorruptObject(f"{shown}: its files do not make the tree cas recorded beside it ({known[0].root[:12]}); "
                            f"stored as {info.tag} ({info.root[:12]}): check who pushed it")  # fmt: skip
    return Imported(info, *stats)


async def _side(registry: Registry, repository: str, digest: str, shown: str) -> tuple[ModelInfo, Tree] | None:
    """The ref record and tree cas put beside an artifact, or None (another tool's artifact)."""
    try:
        body, _ = await registry.get_manifest(repository, modelpack.side_tag(digest))
    except NotFound:
        return None
    side = modelpack.read_side(body, f"{shown} (its cas tree)", digest)
    info = ref.decode(await registry.get_blob(repository, side.ref.digest, 1 << 16))
    encoded = await registry.get_blob(repository, side.tree.digest, 256 << 20)
    return info, decode_tree(encoded, info.root)


async def _fetch_all(cache: LocalCache, registry: Registry, repository: str, artifact: modelpack.Artifact,
                     known: tuple[ModelInfo, Tree] | None, staging: Path) -> tuple[int, int]:  # fmt: skip
    files = {f.path: f for f in known[1].files} if known else {}
    slots = asyncio.Semaphore(AT_ONCE)
    totals = [0, 0]

    async def one(layer: modelpack.Layer) -> None:
        async with slots:
            entry = files.get(layer.path) if not layer.tar else None
            if entry is not None and entry.size == layer.blob.size:
                got = await _assemble(cache, registry, repository, layer.blob, entry, _dest(staging, layer.path))
            else:
                got = await _whole(registry, repository, layer, staging)
            totals[0], totals[1] = totals[0] + got[0], totals[1] + got[1]

    await asyncio.gather(*(one(layer) for layer in artifact.layers))
    return totals[0], totals[1]


async def _whole(registry: Registry, repository: str, layer: modelpack.Layer, staging: Path) -> tuple[int, int]:
    if not layer.tar:
        with _dest(staging, layer.path).open("xb") as out:
            await registry.get_file(repository, layer.blob, out)
        return layer.blob.size, 0
    with tempfile.TemporaryFile(dir=staging.parent) as archive:
        await registry.get_file(repository, layer.blob, archive)
        archive.seek(0)
        await asyncio.to_thread(_unpack, archive, layer.tar, staging)
    return layer.blob.size, 0


async def _assemble(cache: LocalCache, registry: Registry, repository: str, blob: Blob, entry: FileEntry,
                    dest: Path) -> tuple[int, int]:  # fmt: skip
    """A file from its chunks: those this cache holds (re-hashed), the rest as ranges of its layer."""
    chunks, offset = [], 0
    for cid, length in entry.chunk_list():
        chunks.append((cid, offset, length))
        offset += length
    seeds = cache.chunk_index().find([c[0] for c in chunks])
    fetched = reused = 0
    with dest.open("xb") as out:
        missing = []
        for cid, start, length in chunks:
            data = _local_chunk(cache, seeds.get(cid), cid)
            if data is None:
                missing.append((cid, start, length))
                continue
            os.pwrite(out.fileno(), data, start)
            reused += length
        for span in _spans(missing):
            data = await registry.get_range(repository, blob.digest, span[0][1], span[-1][1] + span[-1][2])
            for cid, start, length in span:
                piece = data[start - span[0][1] : start - span[0][1] + length]
                if chunk_id(piece) != cid:
                    raise CorruptObject(f"{repository}: a chunk of {entry.path} in its layer does not match the "
                                        "cas tree beside it; the artifact was changed after it was pushed")  # fmt: skip
                os.pwrite(out.fileno(), piece, start)
            fetched += len(data)
        out.truncate(entry.size)
    return fetched, reused


def _local_chunk(cache: LocalCache, seed: Seed | None, cid: bytes) -> bytes | None:
    """A chunk read from a local blob, or None when it is not here or no longer what it was."""
    if seed is None:
        return None
    try:
        with cache.objects.blob_path(seed.file_id, seed.executable).open("rb") as f:
            data = os.pread(f.fileno(), seed.length, seed.offset)
    except OSError:
        return None
    return data if chunk_id(data) == cid else None


def _spans(missing: list[tuple[bytes, int, int]]) -> list[list[tuple[bytes, int, int]]]:
    """Consecutive missing chunks grouped into range requests of at most ``SPAN`` bytes."""
    spans: list[list[tuple[bytes, int, int]]] = []
    for chunk in missing:
        last = spans[-1][-1] if spans else None
        if last and last[1] + last[2] == chunk[1] and chunk[1] + chunk[2] - spans[-1][0][1] <= SPAN:
            spans[-1].append(chunk)
        else:
            spans.append([chunk])
    return spans


def _dest(staging: Path, path: str) -> Path:
    """Where a file of the artifact is staged; a path given twice, or under a file, is refused."""
    dest = staging / check_path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidManifest(f"the artifact holds {path!r} under a path that is a file; refused") from None
    if dest.exists():
        raise InvalidManifest(f"the artifact holds {path!r} twice; refused")
    return dest


def _unpack(archive: IO[bytes], kind: str, staging: Path) -> None:
    """Unpack a tar layer: regular files and folders only, every path inside the model."""
    mode = {"tar": "r:", "tar+gzip": "r:gz"}.get(kind)
    if kind == "tar+zstd":
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(archive)
        opened = tarfile.open(fileobj=stream, mode="r|")
    else:
        opened = tarfile.open(fileobj=archive, mode="r|gz" if mode == "r:gz" else "r|")
    with opened as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if member.isdir() or not name:
                continue
            if not member.isfile():
                raise InvalidManifest(f"a tar layer holds {name!r}, which is not a regular file; refused")
            src = tar.extractfile(member)
            if src is None:  # a regular file always has its bytes: only a link or a device has none
                raise InvalidManifest(f"a tar layer holds {name!r} without its bytes; refused")
            with src, _dest(staging, name).open("xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                if member.mode & 0o111:
                    os.fchmod(out.fileno(), 0o755)


def _default_tag(target: Reference, digest: str) -> str:
    name = target.repository.rsplit("/", 1)[-1]
    version = target.reference if not target.reference.startswith("sha256:") else digest[7:19]
    try:
        return str(tags.Tag(tags.validate_name(name), tags.validate_version(version)))
    except InvalidTag as e:
        raise InvalidInput(f"cannot name the import after {target.repository}:{target.reference} ({e}); give a "
                           "tag: cas import-oci REF NAME:VERSION") from None  # fmt: skip
