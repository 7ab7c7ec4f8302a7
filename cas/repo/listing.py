"""The listings a repository keeps as plain objects, for servers that cannot list folders.

A static web server or a CDN answers GETs and nothing else, so what
``name:latest`` and ``cas list --remote`` need is kept in two documents that
every push updates (by compare-and-set, so racing pushes lose nothing):

    index/names               [1, [name, ...]]                    sorted, unique
    index/versions/<name>     [1, [[version, time], ...]]         sorted by version, unique

A version's time in its listing orders the versions for ``name:latest``: its
creation time, or just after the newest time listed when its publisher's
clock says earlier.  So the repository's own order of pushes (each one a
compare-and-set of the listing) decides ``latest``, not a host's clock.

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
from typing import Any

import msgpack

from ..content.ref import valid_time
from ..content.tags import validate_name, validate_version
from ..errors import InvalidInput, InvalidManifest, InvalidTag
from .format import FORMAT

# Names in a repository, versions of a name: past it a listing is refused at its header, within seconds (a
# million-entry listing made `list --remote` run for minutes in gigabytes); a push past it fails.
MAX_ENTRIES = 100_000
ORDER_STEP = 0.001  # seconds a version is listed after the newest listed before it, if its clock says earlier


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
    if name in names:
        return None
    _check_room(len(names), f"names, so {name!r} cannot be added")
    return encode_names([*names, name])


def with_version(data: bytes | None, version: str, created: float) -> bytes | None:
    """A versions listing with ``version`` added, or None when it is there already.

    Its time is its creation time, but never before a time listed already: the repository orders its
    versions (each addition is a compare-and-set of this document), not a publisher's clock, so ``latest``
    is the version pushed last even when a host whose clock runs ahead pushed the one before."""
    versions = decode_versions(data) if data is not None else {}
    if version in versions:
        return None
    _check_room(len(versions), f"versions of this name, so {version!r} cannot be added")
    listed = max(created, max(versions.values(), default=0.0) + ORDER_STEP)
    if not valid_time(listed):
        raise InvalidManifest(f"a listing of versions holds a time past the year 5000, so {version!r} cannot be "
                              "listed after it: the repository is damaged or hostile; remove that version")  # fmt: skip
    return encode_versions({**versions, version: listed})


def _check_room(count: int, what: str) -> None:
    if count >= MAX_ENTRIES:
        raise InvalidInput(f"the repository lists {MAX_ENTRIES:,} {what}: remove some first (cas rm --remote)")


def without_name(data: bytes | None, name: str) -> bytes | None:
    """The names listing without ``name``, or None when it is not there."""
    names = decode_names(data) if data is not None else []
    return encode_names([n for n in names if n != name]) if name in names else None


def without_version(data: bytes | None, version: str) -> bytes | None:
    """A versions listing without ``version``, or None when it is not there."""
    versions = decode_versions(data) if data is not None else {}
    return encode_versions({v: t for v, t in versions.items() if v != version}) if version in versions else None


def _unpack(data: bytes, what: str) -> list[Any]:
    try:
        doc = msgpack.unpackb(data, raw=False, max_map_len=0, max_ext_len=0, max_bin_len=0, max_str_len=63,
                              max_array_len=MAX_ENTRIES, strict_map_key=True)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - every msgpack failure means "malformed"
        if "exceeds max_array_len" in str(e):
            raise InvalidManifest(f"{what} holds more than {MAX_ENTRIES:,} entries, the most a repository lists; "
                                  "it is damaged or hostile, or its owner must remove versions (cas rm --remote)"
                                  ) from None  # fmt: skip
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
