"""Export and import: one model carried between hosts as an export file, with no repository in reach
(``cas export m:v1 - | ssh host cas import -``); the file's format is ``exportfile``'s.

Import writes bottom-up, as a pull does: each file is assembled in ``tmp/`` and checked against its file id,
the end marker is checked, and only then are the blobs published, then the tree, then the ref (the commit
point).  A blob the cache holds already is not written again; its bytes in the stream are read past, covered
by the end check.  Anything refused leaves nothing stored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..content import codec, ref
from ..content.digest import chunk_id, file_hasher
from ..content.ref import ModelInfo
from ..content.tree import MAX_TREE_BYTES, FileEntry, Tree, decode
from ..errors import CorruptObject, InvalidInput, InvalidManifest, NotFound, Untrusted
from ..local.cache import LocalCache, Progress
from ..system.dirs import make_dirs, remove_tree
from ..system.names import temp_name
from .exportfile import (
    LENGTH,
    MAGIC,
    MAX_SIGNATURES_BYTES,
    VERSION,
    Reader,
    Sink,
    Source,
    blobs_in_order,
    destination,
    ordered,
    source,
)

if TYPE_CHECKING:
    from ..trust.client import Verdict
    from ..trust.policy import TrustPolicy


class ArchiveStats(NamedTuple):
    """What an export or import moved."""

    info: ModelInfo
    stream_bytes: int  # bytes of the export file written or read
    bytes_reused: int  # raw bytes of files the importing cache held already (0 for an export)
    seconds: float


# -- export -----------------------------------------------------------------------


def export_model(cache: LocalCache, tag: str, dest: Source, *, progress: Progress | None = None) -> ArchiveStats:
    """Write ``tag`` as one export file to ``dest``: a path (written under a temporary name and renamed when
    complete), ``-`` for stdout, or a binary file object.  Writes nothing in the cache."""
    start = time.perf_counter()
    info = cache.whole(tag, "an export")
    with cache.locks.hold("objects", shared=True):  # gc must not remove a blob while it is read
        tree = cache.tree(info)
        files = blobs_in_order(tree)
        for f in files:
            if not cache.objects.blob_of(f).exists():
                raise CorruptObject(f"{info.tag}: the blob of {f.path} is missing from {cache.root}; run 'cas verify'")
        with destination(dest, cache.durable) as out:
            sink = Sink(out)
            sink.write(MAGIC + bytes([VERSION]))
            sink.record(info.encode())
            sink.record(tree.encode())
            sink.record(_signatures(cache, info))
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                for length, encoded in ordered(pool, _encode, _chunks(cache, files)):
                    sink.write(LENGTH.pack(len(encoded)))
                    sink.write(encoded)
                    if progress:
                        progress(length)
            sink.end()
    return ArchiveStats(info, sink.count, 0, time.perf_counter() - start)


def _signatures(cache: LocalCache, info: ModelInfo) -> bytes:
    """The trust documents this host verified ``info`` with (none when it never did)."""
    held = cache.trusted.held_for(info)
    if not held:
        return b""
    from ..trust import bundle

    return bundle.encode(bundle.gather(held))


class _Chunk(NamedTuple):
    blob: Path
    offset: int
    length: int
    chunk_id: bytes


def _chunks(cache: LocalCache, files: list[FileEntry]) -> Iterator[_Chunk]:
    for f in files:
        blob, offset = cache.objects.blob_of(f), 0
        for cid, length in f.chunk_list():
            yield _Chunk(blob, offset, length, cid)
            offset += length


def _encode(c: _Chunk) -> tuple[int, bytes]:
    """One chunk read from its blob, re-hashed (a blob damaged since it was stored must not travel) and encoded."""
    with open(c.blob, "rb") as f:
        data = os.pread(f.fileno(), c.length, c.offset)
    if len(data) != c.length or chunk_id(data) != c.chunk_id:
        raise CorruptObject(f"blob {c.blob.name} does not hold chunk {c.chunk_id.hex()[:16]} any more; "
                            "run 'cas verify'")  # fmt: skip
    return c.length, codec.encode(data)


# -- import -----------------------------------------------------------------------


def import_model(cache: LocalCache, src: Source, *, progress: Progress | None = None,
                 trust: TrustPolicy | None = None) -> ArchiveStats:  # fmt: skip
    """Store the model of an export file (a path, ``-`` for stdin, or a binary file object), every chunk
    verified; files the cache holds already are reused.  A tag that exists with the same content is left
    as it is.  ``trust``: the policy the file's signatures must satisfy, checked before anything is written."""
    start = time.perf_counter()
    with source(src) as (f, name):
        reader = Reader(f, name)
        info, tree, encoded = _head(reader)
        signatures = reader.record(MAX_SIGNATURES_BYTES, "the signatures") if reader.version >= 2 else b""
        verdict = _verdict(cache, trust, signatures, info, name) if trust is not None else None
        if _already_here(cache, info):
            stored, reused = info, info.size
        else:
            stored, reused = _store(cache, reader, info, tree, encoded, progress)
        if verdict is not None:
            cache.trusted.record(verdict.anchor, verdict.tag, verdict.verified)
    return ArchiveStats(stored, reader.count, reused, time.perf_counter() - start)


def _store(cache: LocalCache, reader: Reader, info: ModelInfo, tree: Tree, encoded: bytes,
           progress: Progress | None) -> tuple[ModelInfo, int]:  # fmt: skip
    """The model's blobs, tree and ref, written bottom-up once every chunk and the end check passed."""
    with cache.locks.hold("objects", shared=True):  # gc must not remove a blob this import counts on
        work = cache.objects.tmp / temp_name("import-")
        make_dirs(work)
        try:
            assembled, reused = _assemble(cache, reader, tree, work, progress)
            reader.end()
            # those stored already stay in the work folder, removed with it
            cache.objects.store_blobs([(str(p), e.file_id, e.executable) for p, e in assembled], cache.durable)
            return cache.commit(info, tree, encoded), reused
        finally:
            remove_tree(work)


def _verdict(cache: LocalCache, policy: TrustPolicy, signatures: bytes, info: ModelInfo, name: str) -> Verdict:
    """What the file's signatures say the model is, under ``policy``: ``Untrusted`` unless they vouch for
    exactly this version and tree."""
    from ..content import tags
    from ..system import eventloop
    from ..trust import bundle
    from ..trust.client import verify

    source = bundle.Bundle(bundle.decode(signatures, name), name)
    with cache.locks.hold("trust"):
        verdict = eventloop.run(lambda: verify(source, policy, cache.trusted, tags.Tag(info.name, info.version)))
    if verdict.verified.root != info.root:
        raise Untrusted(f"{name} carries {info.tag} with tree {info.root[:16]}, but its signature names "
                        f"{verdict.verified.root[:16]}: refused, nothing was stored")  # fmt: skip
    return verdict


def _head(reader: Reader) -> tuple[ModelInfo, Tree, bytes]:
    """The header, ref and tree, each bounded before it is read and checked before anything is written."""
    reader.header()
    try:
        info = ref.decode(reader.record(ref.MAX_REF_BYTES, "the ref record"))
        encoded = reader.record(MAX_TREE_BYTES, "the tree")
        tree = decode(encoded, info.root)
    except InvalidManifest as e:
        raise InvalidManifest(
            f"{reader.name} describes a model cas refuses: {e}; nothing was stored (cas export "
            "never writes this: the file was altered or forged; export the model again)"
        ) from None
    if tree.size != info.size or len(tree.files) != info.file_count:
        raise reader.damaged(f"its ref and its tree disagree on size or file count ({info.tag})")
    return info, tree, encoded


def _already_here(cache: LocalCache, info: ModelInfo) -> bool:
    """True when the tag is stored with this content; another content under the tag is refused."""
    try:
        existing = cache.get(info.tag)
    except NotFound:
        return False
    if existing.root != info.root:
        raise InvalidInput(f"model {info.tag} already exists here with other content (root {existing.root[:12]}); "
                           f"remove it first with 'cas rm {info.tag}' to import this one")  # fmt: skip
    return True


def _assemble(cache: LocalCache, reader: Reader, tree: Tree, work: Path,
              progress: Progress | None) -> tuple[list[tuple[Path, FileEntry]], int]:  # fmt: skip
    """Every blob the cache lacks, assembled in ``work`` from verified chunks and checked against its file id;
    the chunks of blobs it holds are read past.  Returns the part files and the raw bytes reused."""
    assembled, reused = [], 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for f in blobs_in_order(tree):
            if cache.objects.blob_of(f).exists():
                _skip(reader, f)
                reused += f.size
            else:
                assembled.append((_write_part(pool, reader, f, work), f))
            if progress:
                progress(f.size)
    return assembled, reused


def _encoded_chunks(reader: Reader, f: FileEntry) -> Iterator[tuple[bytes, bytes, int, str]]:
    """(encoded bytes, chunk id, raw length, name) of each chunk of ``f``, its length bounded before it is read."""
    for i, (cid, length) in enumerate(f.chunk_list()):
        what = f"chunk {i} of {f.path}"
        yield reader.record(length + 1, what), cid, length, what  # the codec stores at most raw plus its byte


def _skip(reader: Reader, f: FileEntry) -> None:
    for _ in _encoded_chunks(reader, f):
        pass


def _write_part(pool: ThreadPoolExecutor, reader: Reader, f: FileEntry, work: Path) -> Path:
    part = work / f"{f.file_id.hex()}{'.x' if f.executable else ''}"
    hasher = file_hasher(threads=False)
    with open(part, "xb") as out:
        for data in ordered(pool, lambda item: _decode(reader, *item), _encoded_chunks(reader, f)):
            out.write(data)
            hasher.update(data)
    if hasher.digest() != f.file_id:
        raise reader.damaged(f"{f.path} assembled from verified chunks does not hash to its file id")
    return part


def _decode(reader: Reader, encoded: bytes, cid: bytes, length: int, what: str) -> bytes | memoryview:
    try:
        return codec.decode(encoded, length, cid)
    except CorruptObject as e:
        raise reader.damaged(f"{what} is damaged ({e})") from None
