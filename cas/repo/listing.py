"""The listings a repository keeps as plain objects, for servers that cannot list folders.

A static web server or a CDN answers GETs and nothing else, so what
``name:latest`` and ``cas list --remote`` need is kept in two documents that
every push updates (by compare-and-set, so racing pushes lose nothing):

    index/names               [1, [name, ...]]                    sorted, unique
    index/versions/<name>     [1, [[version, created], ...]]      sorted by version, unique

A push adds its version to the listing *before* it creates the ref, so a
listing always names every ref (a version whose ref does not exist yet, or
never will after an interrupted push, is skipped by readers).  Decoding is
as strict as for trees: the documents may come from a hostile server.

``rm --remote`` works the other way round: the ref goes first, then its
version leaves the listing, and its name when no version is left (put
back if a push added a version meanwhile).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgpack

from ..errors import InvalidManifest, InvalidTag
from ..ref import valid_time
from ..tags import validate_name, validate_version
from .format import FORMAT

MAX_ENTRIES = 1 << 20  # names in a repository, versions of a name


def names_key() -> str:
    return "index/names"


def versions_key(name: str) -> str:
    return f"index/versions/{name}"


def encode_names(names: Iterable[str]) -> bytes:
    return msgpack.packb([FORMAT, sorted(set(names))], use_bin_type=True)


def decode_names(data: bytes) -> list[str]:
    names = _unpack(data, "the listing of names")
    if not all(isinstance(n, str) for n in names):
        raise InvalidManifest("the listing of names holds something that is not a name")
    _check_sorted(names, "the listing of names")
    _check_each(names, validate_name, "the listing of names")
    return names


def encode_versions(versions: dict[str, float]) -> bytes:
    return msgpack.packb([FORMAT, [[v, float(versions[v])] for v in sorted(versions)]], use_bin_type=True)


def decode_versions(data: bytes) -> dict[str, float]:
    """Version -> creation time, as a push recorded it."""
    what = "a listing of versions"
    entries = _unpack(data, what)
    if not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and valid_time(e[1]) for e in entries):
        raise InvalidManifest(f"{what} holds an entry that is not [version, creation time]")
    versions = [e[0] for e in entries]
    _check_sorted(versions, what)
    _check_each(versions, validate_version, what)
    return {v: float(t) for v, t in entries}


def with_name(data: bytes | None, name: str) -> bytes | None:
    """The names listing with ``name`` added, or None when it is there already (nothing to write)."""
    names = decode_names(data) if data is not None else []
    return None if name in names else encode_names([*names, name])


def with_version(data: bytes | None, version: str, created: float) -> bytes | None:
    """A versions listing with ``version`` added, or None when it is there already."""
    versions = decode_versions(data) if data is not None else {}
    return None if version in versions else encode_versions({**versions, version: created})


def without_name(data: bytes | None, name: str) -> bytes | None:
    """The names listing without ``name``, or None when it is not there."""
    names = decode_names(data) if data is not None else []
    return encode_names([n for n in names if n != name]) if name in names else None


def without_version(data: bytes | None, version: str) -> bytes | None:
    """A versions listing without ``version``, or None when it is not there."""
    versions = decode_versions(data) if data is not None else {}
    return encode_versions({v: t for v, t in versions.items() if v != version}) if version in versions else None


def _unpack(data: bytes, what: str) -> list:
    try:
        doc = msgpack.unpackb(data, raw=False, max_map_len=0, max_ext_len=0, max_bin_len=0, max_str_len=63,
                              max_array_len=MAX_ENTRIES, strict_map_key=True)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - every msgpack failure means "malformed"
        raise InvalidManifest(f"{what} is not valid msgpack ({type(e).__name__})") from None
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == FORMAT and isinstance(doc[1], list)):
        raise InvalidManifest(f"{what} is not a format-{FORMAT} listing")
    return doc[1]


def _check_sorted(items: list[str], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(items)):
        raise InvalidManifest(f"{what} is not sorted, or repeats an entry")


def _check_each(items: list[str], validate: object, what: str) -> None:
    for item in items:
        try:
            validate(item)  # type: ignore[operator]
        except InvalidTag as e:
            raise InvalidManifest(f"{what} holds {item!r:.80}: {e}") from None
