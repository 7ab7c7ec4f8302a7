"""Ref records: what a tag ``name:version`` points at, and the ModelInfo users see.

A ref is a small msgpack map.  It names its own tag so a ref copied out of
its directory still says what it is; ``decode`` checks that against the
path it was read from.  A ref in a local cache may also say which
repositories hold that version (``remotes``: where it was pulled from or
pushed to), which is what lets gc evict it: it can come back.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, NamedTuple

import msgpack

from . import tags
from .digest import DIGEST_SIZE
from .errors import InvalidInput, InvalidManifest

FORMAT = 1
MAX_REF_BYTES = 1 << 20
MAX_REMOTES = 64
_MAX_DEPTH = 16


class ModelInfo(NamedTuple):
    """One stored model version, as recorded by its ref.

    A NamedTuple: immutable, and the cheapest object to build, which matters
    because one is built on every descriptor's first access.
    """

    name: str
    version: str
    root: str  # hex BLAKE3 of the tree
    created: float  # seconds since the epoch
    size: int
    file_count: int
    labels: dict[str, str] = {}  # noqa: RUF012 - never mutated; a fresh dict is passed when set
    metadata: dict[str, Any] = {}  # noqa: RUF012

    def __repr__(self) -> str:
        return f"ModelInfo(tag={self.tag!r}, root={self.root[:12]!r}, size={self.size}, files={self.file_count})"

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
        }

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def creation_time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.created, _dt.timezone.utc)

    def encode(self, remotes: list[str] | None = None) -> bytes:
        """The ref record; ``remotes`` only in a local cache (a repository's refs never carry them)."""
        extra = {"remotes": remotes[-MAX_REMOTES:]} if remotes else {}
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


def decode(data: bytes, *, name: str | None = None, version: str | None = None) -> ModelInfo:
    """Decode a ref record, checking its fields and, if given, the tag it was stored under."""
    if len(data) > MAX_REF_BYTES:
        raise InvalidManifest(f"ref record is {len(data)} bytes, more than {MAX_REF_BYTES}")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:
        raise InvalidManifest(f"ref record is not valid msgpack ({type(e).__name__}: {e})") from None
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
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidManifest(f"ref record lacks a field or has a wrong type ({e})") from None
    ok = (
        isinstance(info.name, str)
        and isinstance(info.version, str)
        and info.root is not None
        and isinstance(info.created, (int, float))
        and type(info.size) is int
        and type(info.file_count) is int
        and isinstance(info.labels, dict)
        and isinstance(info.metadata, dict)
    )
    if not ok:
        raise InvalidManifest("ref record has a field of the wrong type")
    if (name is not None and info.name != name) or (version is not None and info.version != version):
        raise InvalidManifest(f"ref record for {info.tag} is stored under {name}:{version}")
    if name is None:  # a name given by the caller was checked when its tag was parsed
        tags.validate_name(info.name)
    tags.validate_version(info.version)
    return info


def remotes_of(data: bytes) -> list[str]:
    """The repositories a local ref record says hold its version; none for a malformed field (it only
    makes the version look stored here alone, which gc never evicts)."""
    try:
        remotes = msgpack.unpackb(data, raw=False).get("remotes", [])
    except Exception:
        return []
    if not isinstance(remotes, list) or not all(isinstance(r, str) for r in remotes):
        return []
    return remotes


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
