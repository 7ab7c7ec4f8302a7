"""Export files: one model (ref, tree and chunks) as a single stream, to carry between hosts with no repository
in reach (``cas export m:v1 - | ssh host cas import -``).

Format, version 2 (integers big-endian)::

    magic       8 bytes   b"\\x89CASX\\r\\n\\x1a" (PNG-style: mangled line endings or a text file are refused)
    version     1 byte    2 (1: the same without the signatures record; still read)
    ref         uint32 length, then the ref record (``ref``, no remotes)
    tree        uint32 length, then the encoded tree (``tree``); it hashes to the ref's root
    signatures  uint32 length, then the signed trust documents the exporting host verified the model with
                (``cas.trust.bundle``; length 0: none); a host with a trust policy verifies them before
                anything is written, as it would a repository's
    chunks      for each distinct blob (file id, executable) in tree order, each of its chunks in file order:
                uint32 length, then the chunk encoded by ``codec`` as in repository packs
    end         4 bytes b"CEND", then BLAKE3 of every byte before it (32 bytes); nothing may follow

Chunk ids and raw lengths are not repeated: the tree lists them, so a reader knows before each chunk what it
must decode to, bounds its length (an encoded chunk is at most its raw length plus the codec byte) and checks
its id.  Both sides stream chunk by chunk, encoding or decoding on every core in a bounded window: memory does
not grow with the model.

Import writes bottom-up, as a pull does: each file is assembled in ``tmp/`` and checked against its file id,
the end marker is checked, and only then are the blobs published, then the tree, then the ref (the commit
point).  A blob the cache holds already is not written again; its bytes in the stream are read past, covered
by the end check.  Anything refused leaves nothing stored.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, TypeVar

from blake3 import blake3

from ..content import codec, ref
from ..content.digest import chunk_id, file_hasher
from ..content.ref import ModelInfo
from ..content.tree import MAX_TREE_BYTES, FileEntry, Tree, decode
from ..errors import CorruptObject, InvalidInput, InvalidManifest, NotFound, Untrusted
from ..local.cache import LocalCache, Progress
from ..system.dirs import make_dirs, remove_tree
from ..system.names import temp_name

if TYPE_CHECKING:
    from ..trust.client import Verdict
    from ..trust.policy import TrustPolicy

MAGIC = b"\x89CASX\r\n\x1a"
VERSION = 2
READS = (1, 2)  # the format versions import reads
END = b"CEND"
LENGTH = struct.Struct(">I")
MAX_SIGNATURES_BYTES = 64 << 20  # the signatures record (cas.trust.bundle bounds each document within it)
WINDOW = 64  # chunks encoded or decoded ahead of the writer: at most ~2 x 64 x 256 KiB in memory
BUFFER = 1 << 20  # bytes buffered when reading or writing an export file

Source = str | os.PathLike[str] | IO[bytes]  # a path ("-": stdin) or a binary file object
T = TypeVar("T")
R = TypeVar("R")


class ArchiveStats(NamedTuple):
    """What an export or import moved."""

    info: ModelInfo
    stream_bytes: int  # bytes of the export file written or read
    bytes_reused: int  # raw bytes of files the importing cache held already (0 for an export)
    seconds: float


def blobs_in_order(tree: Tree) -> list[FileEntry]:
    """The files whose chunks an export carries: each distinct blob once, in tree order."""
    seen: set[tuple[bytes, bool]] = set()
    out = []
    for f in tree.files:
        if (f.file_id, f.executable) not in seen:
            seen.add((f.file_id, f.executable))
            out.append(f)
    return out


def ordered(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int = WINDOW) -> Iterator[R]:
    """``fn`` over ``items`` on the pool, results in order, at most ``window`` in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


# -- export -----------------------------------------------------------------------


class _Sink:
    """The export stream: counts and hashes every byte written."""

    def __init__(self, out: IO[bytes]):
        self.out, self.hash, self.count = out, blake3(), 0

    def write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.count += len(data)

    def record(self, data: bytes) -> None:
        self.write(LENGTH.pack(len(data)) + data)

    def end(self) -> None:
        digest = self.hash.digest()
        self.out.write(END + digest)
        self.count += len(END) + len(digest)
        self.out.flush()


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
        with _destination(dest, cache.durable) as out:
            sink = _Sink(out)
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


@contextlib.contextmanager
def _destination(dest: Source, durable: bool) -> Iterator[IO[bytes]]:
    """The stream to write: stdout, the caller's file object, or a file published by rename only when complete
    (fsynced first unless the cache is not durable: ``CAS_DURABLE=0`` means no fsync anywhere)."""
    if dest == "-":
        yield sys.stdout.buffer
        return
    if not isinstance(dest, (str, os.PathLike)):
        yield dest
        return
    path = Path(dest)
    tmp = path.with_name(f".{path.name}.{temp_name()}")
    try:
        try:
            f = open(tmp, "xb", buffering=BUFFER)
        except OSError as e:  # name the file the user gave, not the temporary
            raise OSError(e.errno, e.strerror, str(path)) from None
        with f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- import -----------------------------------------------------------------------


class _Reader:
    """The import stream: exact reads that refuse a short one, every byte hashed for the end check."""

    def __init__(self, f: IO[bytes], name: str):
        self.f, self.name, self.hash, self.count, self.version = f, name, blake3(), 0, VERSION

    def damaged(self, what: str) -> CorruptObject:
        return CorruptObject(f"{self.name} is not a whole cas export file: {what}; nothing was stored: export the "
                             "model again (and check the copy)")  # fmt: skip

    def header(self) -> None:
        """The magic and the format version: anything else is refused before a length is believed."""
        head = self.f.read(len(MAGIC) + 1)
        if not head:
            raise InvalidInput(f"{self.name} is empty: give a file written by 'cas export'")
        if head[: len(MAGIC)] != MAGIC:
            raise InvalidInput(f"{self.name} is not a cas export file (it does not start with the export header); "
                               "give a file written by 'cas export'")  # fmt: skip
        if len(head) <= len(MAGIC) or head[len(MAGIC)] not in READS:
            version = head[len(MAGIC)] if len(head) > len(MAGIC) else "none"
            raise InvalidInput(f"{self.name} is a cas export file of format {version}; this cas reads formats "
                               f"{READS[0]} to {READS[-1]}: import it with the cas that exported it")  # fmt: skip
        self.version = head[len(MAGIC)]
        self.hash.update(head)
        self.count += len(head)

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        while len(data) < n:  # a raw file object may return short reads before the end
            more = self.f.read(n - len(data))
            if not more:
                raise self.damaged(f"it ends in the middle of {what} (truncated)")
            data += more
        self.hash.update(data)
        self.count += n
        return data

    def record(self, limit: int, what: str) -> bytes:
        (n,) = LENGTH.unpack(self.read(LENGTH.size, f"the length of {what}"))
        if n > limit:
            raise self.damaged(f"{what} claims {n} bytes, more than the {limit} allowed")
        return self.read(n, what)

    def end(self) -> None:
        expected = self.hash.digest()
        marker = self.f.read(len(END) + len(expected))
        if len(marker) < len(END) + len(expected):
            raise self.damaged("it ends before its end marker (truncated)")
        if marker[: len(END)] != END:
            raise self.damaged("its end marker is missing where the last chunk ends")
        if marker[len(END) :] != expected:
            raise self.damaged("its end check does not match its bytes (altered)")
        if self.f.read(1):
            raise self.damaged("bytes follow its end marker")
        self.count += len(marker)


def import_model(cache: LocalCache, src: Source, *, progress: Progress | None = None,
                 trust: TrustPolicy | None = None) -> ArchiveStats:  # fmt: skip
    """Store the model of an export file (a path, ``-`` for stdin, or a binary file object), every chunk
    verified; files the cache holds already are reused.  A tag that exists with the same content is left
    as it is.  ``trust``: the policy the file's signatures must satisfy, checked before anything is written."""
    start = time.perf_counter()
    with _source(src) as (f, name):
        reader = _Reader(f, name)
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


def _store(cache: LocalCache, reader: _Reader, info: ModelInfo, tree: Tree, encoded: bytes,
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


@contextlib.contextmanager
def _source(src: Source) -> Iterator[tuple[IO[bytes], str]]:
    if src == "-":
        yield sys.stdin.buffer, "stdin"
    elif isinstance(src, (str, os.PathLike)):
        with open(src, "rb", buffering=BUFFER) as f:
            yield f, os.fspath(src)
    else:
        yield src, getattr(src, "name", "the export stream")


def _head(reader: _Reader) -> tuple[ModelInfo, Tree, bytes]:
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


def _assemble(cache: LocalCache, reader: _Reader, tree: Tree, work: Path,
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


def _encoded_chunks(reader: _Reader, f: FileEntry) -> Iterator[tuple[bytes, bytes, int, str]]:
    """(encoded bytes, chunk id, raw length, name) of each chunk of ``f``, its length bounded before it is read."""
    for i, (cid, length) in enumerate(f.chunk_list()):
        what = f"chunk {i} of {f.path}"
        yield reader.record(length + 1, what), cid, length, what  # the codec stores at most raw plus its byte


def _skip(reader: _Reader, f: FileEntry) -> None:
    for _ in _encoded_chunks(reader, f):
        pass


def _write_part(pool: ThreadPoolExecutor, reader: _Reader, f: FileEntry, work: Path) -> Path:
    part = work / f"{f.file_id.hex()}{'.x' if f.executable else ''}"
    hasher = file_hasher(threads=False)
    with open(part, "xb") as out:
        for data in ordered(pool, lambda item: _decode(reader, *item), _encoded_chunks(reader, f)):
            out.write(data)
            hasher.update(data)
    if hasher.digest() != f.file_id:
        raise reader.damaged(f"{f.path} assembled from verified chunks does not hash to its file id")
    return part


def _decode(reader: _Reader, encoded: bytes, cid: bytes, length: int, what: str) -> bytes | memoryview:
    try:
        return codec.decode(encoded, length, cid)
    except CorruptObject as e:
        raise reader.damaged(f"{what} is damaged ({e})") from None
