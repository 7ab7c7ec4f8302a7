"""An independent reader of cas repositories, written from ``docs/format.md`` alone.

It imports nothing from ``cas``: only the standard library and the three libraries the format names
(msgpack, BLAKE3, zstd).  ``pull(repo, "name:version", dest)`` reads a repository folder and writes the
model's files under ``dest``, checking everything the document says a reader must check; anything wrong
raises ``SpecError``.  ``tests/test_spec_reader.py`` runs it against repositories cas wrote.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import zstandard
from blake3 import blake3

MAX_REF = 1 << 20
MAX_TREE = 128 << 20
MAX_DOC = 256 << 20
MAX_CHUNK = 256 << 10
CHUNK = struct.Struct(">32sI")
LOCATOR = struct.Struct(">32sIQI")
PLANE = struct.Struct(">BI")


class SpecError(Exception):
    """The repository holds something the format does not allow."""


def read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SpecError(f"{path} is larger than {limit} bytes")
    return data


def ref(repo: Path, name: str, version: str) -> dict:
    doc = msgpack.unpackb(read(repo / "refs" / name / version, MAX_REF), raw=False)
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise SpecError("not a format-1 ref")
    if doc.get("name") != name or doc.get("version") != version:
        raise SpecError("the ref names another tag than its path")
    if not isinstance(doc.get("root"), bytes) or len(doc["root"]) != 32:
        raise SpecError("the ref's root is not 32 bytes")
    return doc


def latest(repo: Path, name: str) -> str:
    doc = msgpack.unpackb(read(repo / "index" / "versions" / name, MAX_DOC), raw=False)
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1):
        raise SpecError("not a format-1 versions listing")
    for version, _ in sorted(doc[1], key=lambda e: (e[1], e[0]), reverse=True):
        if (repo / "refs" / name / version).exists():
            return version
    raise SpecError(f"{name} has no version")


def tree(repo: Path, root: str) -> list[tuple[str, int, bool, bytes, list[tuple[bytes, int]]]]:
    data = read(repo / "trees" / root, MAX_TREE)
    if blake3(data).hexdigest() != root:
        raise SpecError("the tree does not hash to its root")
    doc = msgpack.unpackb(data, raw=False)
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1 and isinstance(doc[1], list)):
        raise SpecError("not a format-1 tree")
    if msgpack.packb(doc, use_bin_type=True) != data:
        raise SpecError("the tree is not canonically encoded")
    files, previous = [], None
    for path, size, executable, file_id, packed in doc[1]:
        check_path(path)
        if previous is not None and path.encode() <= previous.encode():
            raise SpecError("tree paths are not strictly increasing")
        previous = path
        if not isinstance(packed, bytes) or len(packed) % CHUNK.size or len(file_id) != 32:
            raise SpecError(f"{path}: malformed entry")
        chunks = list(CHUNK.iter_unpack(packed))
        if any(not 0 < n <= MAX_CHUNK for _, n in chunks) or sum(n for _, n in chunks) != size:
            raise SpecError(f"{path}: chunk lengths do not add up to its size")
        files.append((path, size, executable, file_id, chunks))
    return files


def check_path(path: object) -> None:
    if not isinstance(path, str) or not path or len(path.encode()) > 4096 or path.startswith("/"):
        raise SpecError(f"path {path!r} is not allowed")
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise SpecError(f"path {path!r} is not allowed")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part.encode()) > 255:
            raise SpecError(f"path {path!r} is not allowed")


def locator(repo: Path, root: str) -> dict[bytes, tuple[str, int, int]]:
    doc = msgpack.unpackb(read(repo / "locators" / root, MAX_DOC), raw=False)
    if not (isinstance(doc, list) and len(doc) == 3 and doc[0] == 1 and isinstance(doc[2], bytes)):
        raise SpecError("not a format-1 locator")
    packs, records = doc[1], doc[2]
    if len(records) % LOCATOR.size:
        raise SpecError("locator records are not whole")
    out = {}
    for cid, ordinal, offset, length in LOCATOR.iter_unpack(records):
        if ordinal >= len(packs) or not 0 < length <= MAX_CHUNK + 1024:
            raise SpecError("a locator record points outside its packs")
        out[cid] = (packs[ordinal], offset, length)
    return out


def decode(frame: bytes, raw_length: int, cid: bytes) -> bytes:
    """A codec frame (section 2) decoded and checked against its chunk id."""
    codec, payload = frame[0], frame[1:]
    if codec == 0:
        out = payload
    elif codec == 1:
        out = unzstd(payload, raw_length)
    elif codec in (2, 3):
        out = planes(payload, raw_length, 2 if codec == 2 else 4)
    else:
        raise SpecError(f"unknown codec {codec}")
    if len(out) != raw_length or blake3(out).digest() != cid:
        raise SpecError(f"chunk {cid.hex()[:16]} does not decode to itself")
    return out


def unzstd(frame: bytes, expected: int) -> bytes:
    if zstandard.frame_content_size(frame) != expected:
        raise SpecError("a zstd frame declares another size")
    return zstandard.ZstdDecompressor().decompress(frame, max_output_size=expected)


def planes(payload: bytes, raw_length: int, word: int) -> bytes:
    m, t = divmod(raw_length, word)
    pos, bodies = PLANE.size * word, []
    for i in range(word):
        kind, stored = PLANE.unpack_from(payload, i * PLANE.size)
        body = payload[pos : pos + stored]
        if len(body) != stored:
            raise SpecError("a plane is truncated")
        bodies.append(body if kind == 0 else unzstd(body, m))
        if kind not in (0, 1) or len(bodies[-1]) != m:
            raise SpecError("a plane has the wrong length or kind")
        pos += stored
    tail = payload[pos:]
    if len(tail) != t:
        raise SpecError("the tail has the wrong length")
    out = bytearray(raw_length)
    for i, body in enumerate(bodies):
        out[i : m * word : word] = body
    out[m * word :] = tail
    return bytes(out)


def pull(repo: Path, tag: str, dest: Path) -> dict:
    """Write the files of ``tag`` (``name:version`` or ``name:latest``) under ``dest``; returns its ref."""
    name, _, version = tag.partition(":")
    version = latest(repo, name) if version in ("", "latest") else version
    record = ref(repo, name, version)
    root = record["root"].hex()
    files, where = tree(repo, root), locator(repo, root)
    for path, size, executable, file_id, chunks in files:
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        whole = blake3()
        with open(target, "wb") as out:
            for cid, raw_length in chunks:
                if cid not in where:
                    raise SpecError(f"the locator does not place chunk {cid.hex()[:16]}")
                pack, offset, length = where[cid]
                with open(repo / "packs" / pack, "rb") as f:
                    f.seek(offset)
                    data = decode(f.read(length), raw_length, cid)
                out.write(data)
                whole.update(data)
        if whole.digest() != file_id:
            raise SpecError(f"{path} does not hash to its file id")
        target.chmod(0o755 if executable else 0o644)
    return record
