"""Ref records: what a tag ``name:version`` points at, and the ModelInfo users see.

A ref is a small msgpack map.  It names its own tag so a ref copied out of
its directory still says what it is; ``decode`` checks that against the
path it was read from.  A ref in a local cache may also say which
repositories hold that version (``remotes``: where it was pulled from or
pushed to), which is what lets gc evict it: it can come back.
"""

from __future__ import annotations

import sys
from collections import namedtuple

from ..errors import InvalidInput, InvalidManifest
from . import tags

TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any

FORMAT = 1
MAX_REF_BYTES = 1 << 20
MAX_CREATED = 1e11  # seconds since the epoch (the year 5138): every date function takes what is below it
MAX_REMOTES = 64
DIGEST_SIZE = 32  # cas.content.digest's; not imported from there, which would load blake3 on a service's warm path
_MAX_DEPTH = 16

# named ModelInfo, not _Fields: its repr and its pickles say ModelInfo
_Fields = namedtuple("ModelInfo", ("name", "version", "root", "created", "size", "file_count",  # type: ignore[name-match]
                                   "labels", "metadata", "partial"), defaults=({}, {}, False))  # fmt: skip


class ModelInfo(_Fields):
    """One stored model version, as recorded by its ref.

    A named tuple (collections', not typing's, which costs 2 ms to import):
    immutable, and the cheapest object to build, which matters because one
    is built on every descriptor's first access.
    """

    __slots__ = ()
    name: str
    version: str
    root: str  # hex BLAKE3 of the tree
    created: float  # seconds since the epoch
    size: int
    file_count: int
    labels: dict[str, str]  # default {}: never mutated; a fresh dict is passed when set
    metadata: dict[str, Any]
    partial: bool  # in a local cache: only some files are here (a pull with --include/--exclude)

    def __repr__(self) -> str:
        part = ", partial" if self.partial else ""
        return f"ModelInfo(tag={self.tag!r}, root={self.root[:12]!r}, size={self.size}, files={self.file_count}{part})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as ``cas list --json`` prints it."""
        return {
            "tag": self.tag,
            "name": self.name,
            "version": self.version,
            "root": self.root,
            "created": self.creation_time.isoformat(),
            "size": self.size,
            "file_count": self.file_count,
            "labels": self.labels,
            "metadata": self.metadata,
            "partial": self.partial,
        }

    def as_partial(self, partial: bool) -> ModelInfo:
        """This version, marked as held partly (or wholly) in a local cache."""
        return self if self.partial == partial else self._replace(partial=partial)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def creation_time(self) -> _dt.datetime:
        import datetime as _dt

        return _dt.datetime.fromtimestamp(self.created, _dt.timezone.utc)

    def encode(self, remotes: list[str] | None = None) -> bytes:
        """The ref record; ``remotes`` and ``partial`` only in a local cache (a repository's refs never carry them)."""
        import msgpack

        extra: dict[str, Any] = {"remotes": remotes[-MAX_REMOTES:]} if remotes else {}
        if self.partial:
            extra["partial"] = True
        return msgpack.packb(
            {
                **extra,
                "format": FORMAT,
                "name": self.name,
                "version": self.version,
                "root": bytes.fromhex(self.root),
                "created": self.created,
                "size": self.size,
                "files": self.file_count,
                "labels": self.labels,
                "metadata": self.metadata,
            },
            use_bin_type=True,
        )


def recency(info: ModelInfo) -> tuple[float, str]:
    """What "newest" means, everywhere: the latest creation time; equal times fall back to the version."""
    return (info.created, info.version)


def decode(data: bytes, *, name: str | None = None, version: str | None = None, local: bool = False) -> ModelInfo:
    """Decode a ref record, checking its fields and, if given, the tag it was stored under; ``local``: a record
    of this host's cache, whose ``partial`` mark counts (a repository's document cannot set it)."""
    if len(data) > MAX_REF_BYTES:
        raise InvalidManifest(f"ref record is {len(data)} bytes, more than {MAX_REF_BYTES}")
    doc = _unpack(data)
    try:
        if doc["format"] != FORMAT:
            raise InvalidManifest(f"ref record has unknown format {doc['format']!r}")
        info = ModelInfo(
            name=doc["name"],
            version=doc["version"],
            root=doc["root"].hex() if isinstance(doc["root"], bytes) and len(doc["root"]) == DIGEST_SIZE else None,
            created=doc["created"],
            size=doc["size"],
            file_count=doc["files"],
            labels=doc["labels"],
            metadata=doc["metadata"],
            partial=local and doc.get("partial") is True,
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidManifest(f"ref record lacks a field or has a wrong type ({e})") from None
    ok = (
        isinstance(info.name, str)
        and isinstance(info.version, str)
        and info.root is not None
        and valid_time(info.created)
        and type(info.size) is int
        and type(info.file_count) is int
        and isinstance(info.labels, dict)
        and isinstance(info.metadata, dict)
    )
    if not ok:
        created = f" (creation time {info.created!r:.40})" if not valid_time(info.created) else ""
        raise InvalidManifest(f"ref record has a field of the wrong type or out of range{created}")
    if (name is not None and info.name != name) or (version is not None and info.version != version):
        raise InvalidManifest(f"ref record for {info.tag} is stored under {name}:{version}")
    if name is None:  # a name given by the caller was checked when its tag was parsed
        tags.validate_name(info.name)
    tags.validate_version(info.version)
    return info


def valid_time(value: object) -> bool:
    """A creation time a document may carry: seconds since the epoch, finite, from 1970 to ``MAX_CREATED``
    (+inf, NaN or 1e300 from a hostile document made every date shown of the whole cache fail)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < MAX_CREATED


def remotes_of(data: bytes) -> list[str]:
    """The repositories a local ref record says hold its version; none for a malformed field (it only
    makes the version look stored here alone, which gc never evicts)."""
    try:
        remotes = _unpack(data).get("remotes", [])
    except (InvalidManifest, AttributeError):
        return []
    if not isinstance(remotes, list) or not all(isinstance(r, str) for r in remotes):
        return []
    return remotes


def _unpack(data: bytes) -> Any:
    """The msgpack document of a ref record (``msgpack.unpackb(raw=False, strict_map_key=True)``).

    A ref is read on every service's first access, and importing msgpack (with the datetime module
    its extension types load) costs about 2.5 ms, many times the decoding of a 200-byte map: the
    types a ref holds are decoded here, and anything else (extension types, a malformed document)
    goes to msgpack, which decides and words the error."""
    try:
        doc, end = _read(data, 0)
        if end == len(data):
            return doc
    except Exception:  # anything this reader does not handle: msgpack decides below
        pass
    import msgpack

    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:
        raise InvalidManifest(f"ref record is not valid msgpack ({type(e).__name__}: {e})") from None


_LITTLE = sys.byteorder == "little"
_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
# type byte: (kind, bytes of its length or value); kinds: u(nsigned), i(nt), f(loat), s(tr), b(in), a(rray), m(ap)
_SIZED = {0xCC: ("u", 1), 0xCD: ("u", 2), 0xCE: ("u", 4), 0xCF: ("u", 8), 0xD0: ("i", 1), 0xD1: ("i", 2),
          0xD2: ("i", 4), 0xD3: ("i", 8), 0xCA: ("f", 4), 0xCB: ("f", 8), 0xD9: ("s", 1), 0xDA: ("s", 2),
          0xDB: ("s", 4), 0xC4: ("b", 1), 0xC5: ("b", 2), 0xC6: ("b", 4), 0xDC: ("a", 2), 0xDD: ("a", 4),
          0xDE: ("m", 2), 0xDF: ("m", 4)}  # fmt: skip


def _read(data: bytes, i: int) -> tuple[Any, int]:
    """One msgpack value at ``data[i:]`` and where it ends; raises on anything ``_unpack`` leaves to msgpack.
    The common types of a ref (short strings, small ints, maps) are tested first: this runs once per field
    on a service's first access, before the interpreter has warmed up to it."""
    b = data[i]
    i += 1
    if 0xA0 <= b <= 0xBF:  # fixstr: the keys and most values
        end = i + (b & 0x1F)
        if end > len(data):
            raise ValueError("truncated")
        return data[i:end].decode("utf-8"), end
    if b <= 0x7F:
        return b, i
    if b <= 0x8F:
        return _map(data, i, b & 0x0F)
    if b <= 0x9F:
        return _array(data, i, b & 0x0F)
    if b >= 0xE0:
        return b - 0x100, i
    if b in _FIXED:
        return _FIXED[b], i
    kind, n = _SIZED[b]  # KeyError (an extension type, 0xC1): left to msgpack
    end = i + n
    if end > len(data):
        raise ValueError("truncated")
    if kind == "f":  # big-endian float64 / float32, read without struct (0.3 ms to import)
        raw = data[i:end]
        return memoryview(raw[::-1] if _LITTLE else raw).cast("d" if n == 8 else "f")[0], end
    value = int.from_bytes(data[i:end], "big", signed=kind == "i")
    if kind == "u" or kind == "i":
        return value, end
    if kind == "s":
        return _text(data, end, value)
    if kind == "b":
        return _bytes(data, end, value)
    return _array(data, end, value) if kind == "a" else _map(data, end, value)


def _bytes(data: bytes, i: int, n: int) -> tuple[bytes, int]:
    if i + n > len(data):
        raise ValueError("truncated")
    return data[i : i + n], i + n


def _text(data: bytes, i: int, n: int) -> tuple[str, int]:
    raw, i = _bytes(data, i, n)
    return raw.decode("utf-8"), i


def _array(data: bytes, i: int, n: int) -> tuple[list[Any], int]:
    out = []
    for _ in range(n):
        value, i = _read(data, i)
        out.append(value)
    return out, i


def _map(data: bytes, i: int, n: int) -> tuple[dict[Any, Any], int]:
    out = {}
    for _ in range(n):
        b = data[i]
        if 0xA0 <= b <= 0xBF:  # a short string key, read here: one call fewer per field
            end = i + 1 + (b & 0x1F)
            if end > len(data):
                raise ValueError("truncated")
            key = data[i + 1 : end].decode("utf-8")
            i = end
        else:
            key, i = _read(data, i)
            if type(key) is not str:  # strict_map_key allows bytes keys too: msgpack decides those
                raise ValueError("a map key that is not a string")
        out[key], i = _read(data, i)
    return out, i


def check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """Labels are short string pairs, as in BentoML."""
    labels = dict(labels or {})
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidInput(f"label {k!r}={v!r}: labels must be non-empty string keys with string values")
    return labels


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata is any tree of str/int/float/bool/None, lists and str-keyed dicts."""
    metadata = dict(metadata or {})

    def walk(value: Any, where: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise InvalidInput(f"metadata {where} is nested more than {_MAX_DEPTH} levels")
        if value is None or isinstance(value, (str, int, float, bool)):
            return
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]", depth + 1)
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InvalidInput(f"metadata {where}: key {k!r} is not a string")
                walk(v, f"{where}.{k}", depth + 1)
            return
        raise InvalidInput(
            f"metadata {where} is a {type(value).__name__}; use str, int, float, bool, None, lists and dicts"
        )

    walk(metadata, "root", 0)
    return metadata
