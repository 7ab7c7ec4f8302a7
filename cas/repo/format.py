"""Repository layout and the two binary documents that describe packs (pure functions).

Layout, the same for every backend::

    refs/<name>/<version>     ref records (msgpack, as in the local cache)
    trees/<root>              tree manifests, named by their BLAKE3
    packs/<pack id>           encoded chunks back to back, named by the pack's BLAKE3
    packs/<pack id>.idx       the pack's index: chunk id -> offset, lengths, codec
    locators/<root>           for each chunk of a tree: which pack, where
    index/names               the names of the models here (see ``listing``)
    index/versions/<name>     the versions of one name and their creation times
    prune/marks               what a prune found unreachable, and since when (see ``marks``)
    trust/root/<n>            signed root documents, every version (see ``cas.trust``)
    trust/roles/<role>/<n>    a role's signed targets, every version
    trust/state               the signed state: each role's newest version and hash

Packs exist because object stores and CDNs are slow and costly per request;
a pull reads one tree, one locator, then merged byte ranges of packs.
Both documents are msgpack ``[format, ..., records]`` with fixed-size binary
records, so a million chunks decode without a million Python objects, and
both are validated as strictly as trees: they may come from a hostile server.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack

from ..content.chunking import MAX_SIZE as MAX_CHUNK
from ..content.codec import CODEC_NAMES
from ..content.tags import validate_name, validate_version
from ..errors import InvalidManifest

FORMAT = 1
MAX_PACK_BYTES = 1 << 30
MAX_DOC_BYTES = 256 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_ROLE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")

# chunk id, offset in pack, encoded length, raw length, codec
INDEX_RECORD = struct.Struct(">32sQIIB")
# chunk id, pack ordinal, offset in pack, encoded length
LOCATOR_RECORD = struct.Struct(">32sIQI")


def ref_key(name: str, version: str) -> str:
    return f"refs/{name}/{version}"


def trust_root_key(version: int) -> str:
    return f"trust/root/{version}"


def trust_role_key(role: str, version: int) -> str:
    return f"trust/roles/{role}/{version}"


def trust_state_key() -> str:
    return "trust/state"


def tree_key(root: str) -> str:
    return f"trees/{root}"


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id}"


def index_key(pack_id: str) -> str:
    return f"packs/{pack_id}.idx"


def locator_key(root: str) -> str:
    return f"locators/{root}"


def marks_key() -> str:
    return "prune/marks"


def check_key(key: str) -> tuple[str, ...]:
    """Split a repository key into its kind and parts; refuse anything outside the layout."""
    parts = key.split("/")
    try:
        if parts[0] == "refs" and len(parts) == 3:
            validate_name(parts[1])
            validate_version(parts[2])
            return ("ref", parts[1], parts[2])
        if parts[0] in ("trees", "locators") and len(parts) == 2 and _HEX.fullmatch(parts[1]):
            return (parts[0][:-1], parts[1])
        if parts == ["index", "names"]:
            return ("names",)
        if parts == ["prune", "marks"]:
            return ("marks",)
        if parts == ["trust", "state"]:
            return ("trust-state",)
        if parts[:2] == ["trust", "root"] and len(parts) == 3 and _VERSION.fullmatch(parts[2]):
            return ("trust-root", parts[2])
        if (
            parts[:2] == ["trust", "roles"]
            and len(parts) == 4
            and _ROLE.fullmatch(parts[2])
            and _VERSION.fullmatch(parts[3])
        ):
            return ("trust-role", parts[2], parts[3])
        if parts[:2] == ["index", "versions"] and len(parts) == 3:
            return ("versions", validate_name(parts[2]))
        if parts[0] == "packs" and len(parts) == 2:
            name = parts[1]
            if name.endswith(".idx") and _HEX.fullmatch(name[:-4]):
                return ("index", name[:-4])
            if _HEX.fullmatch(name):
                return ("pack", name)
    except ValueError:
        pass
    raise InvalidManifest(f"{key!r} is not a key of the repository layout")


class IndexEntry(NamedTuple):
    chunk_id: bytes
    offset: int
    length: int  # encoded
    raw_length: int
    codec: int


def encode_index(pack_size: int, entries: list[IndexEntry]) -> bytes:
    records = b"".join(INDEX_RECORD.pack(*e) for e in sorted(entries, key=lambda e: e.offset))
    return msgpack.packb([FORMAT, pack_size, records], use_bin_type=True)


def decode_index(data: bytes) -> tuple[int, list[IndexEntry]]:
    """A pack's size and entries, in pack order; refuses overlaps, gaps past the end and bad lengths."""
    pack_size, records = _unpack_doc(data, "pack index", int)
    if not 0 < pack_size <= MAX_PACK_BYTES:
        raise InvalidManifest(f"pack index declares a pack of {pack_size} bytes")
    if len(records) % INDEX_RECORD.size:
        raise InvalidManifest("pack index records are not whole")
    entries = [IndexEntry(*r) for r in INDEX_RECORD.iter_unpack(records)]
    end = 0
    for e in entries:
        if e.offset < end or e.offset + e.length > pack_size:
            raise InvalidManifest(f"pack index entry {e.chunk_id.hex()[:16]} overlaps or lies outside the pack")
        if not 0 < e.raw_length <= MAX_CHUNK or e.length < 1 or e.codec not in CODEC_NAMES:
            raise InvalidManifest(f"pack index entry {e.chunk_id.hex()[:16]} has impossible lengths or codec")
        end = e.offset + e.length
    return pack_size, entries


class Location(NamedTuple):
    pack_id: str
    offset: int
    length: int  # encoded


def encode_locator(locations: dict[bytes, Location]) -> bytes:
    packs = sorted({loc.pack_id for loc in locations.values()})
    ordinal = {p: i for i, p in enumerate(packs)}
    records = b"".join(
        LOCATOR_RECORD.pack(cid, ordinal[loc.pack_id], loc.offset, loc.length) for cid, loc in sorted(locations.items())
    )
    return msgpack.packb([FORMAT, packs, records], use_bin_type=True)


def decode_locator(data: bytes) -> dict[bytes, Location]:
    """Chunk id -> pack and byte range, validated."""
    packs, records = _unpack_doc(data, "locator", list)
    if not all(isinstance(p, str) and _HEX.fullmatch(p) for p in packs):
        raise InvalidManifest("locator names a pack that is not a hex BLAKE3 id")
    if len(records) % LOCATOR_RECORD.size:
        raise InvalidManifest("locator records are not whole")
    out: dict[bytes, Location] = {}
    for cid, ordinal, offset, length in LOCATOR_RECORD.iter_unpack(records):
        if ordinal >= len(packs) or not 0 < length <= MAX_CHUNK + 1024 or offset + length > MAX_PACK_BYTES:
            raise InvalidManifest(f"locator entry {cid.hex()[:16]} points outside its packs")
        out[cid] = Location(packs[ordinal], offset, length)
    return out


def iter_ranges(locations: list[tuple[int, int]], max_gap: int, max_span: int) -> Iterator[tuple[int, int]]:
    """Merge sorted (offset, length) ranges of one pack into (start, end) spans for Range requests.

    Neighbours closer than ``max_gap`` share a request (the gap is read and
    dropped); no span grows past ``max_span`` bytes unless one range alone does.
    """
    span: tuple[int, int] | None = None
    for offset, length in sorted(locations):
        if span is not None and offset - span[1] <= max_gap and offset + length - span[0] <= max_span:
            span = (span[0], max(span[1], offset + length))
            continue
        if span is not None:
            yield span
        span = (offset, offset + length)
    if span is not None:
        yield span


def _unpack_doc(data: bytes, what: str, middle: type) -> tuple[Any, ...]:
    if len(data) > MAX_DOC_BYTES:
        raise InvalidManifest(f"{what} is {len(data)} bytes, more than {MAX_DOC_BYTES}")
    try:
        doc = msgpack.unpackb(data, raw=False, max_map_len=0, max_ext_len=0, max_str_len=128, max_array_len=1 << 20)
    except Exception as e:  # noqa: BLE001 - every msgpack failure means "malformed"
        raise InvalidManifest(f"{what} is not valid msgpack ({type(e).__name__}: {e})") from None
    if not (isinstance(doc, list) and len(doc) == 3 and doc[0] == FORMAT):
        raise InvalidManifest(f"{what} is not a format-{FORMAT} document")
    if not isinstance(doc[1], middle) or isinstance(doc[1], bool) or not isinstance(doc[2], bytes):
        raise InvalidManifest(f"{what} has fields of the wrong type")
    return doc[1], doc[2]
