"""Tag syntax, following BentoML: ``name[:version]``.

Names and versions are lower case, ``[a-z0-9]([a-z0-9._-]*[a-z0-9])?``, at
most 63 characters.  ``latest`` is reserved: it is resolved, never stored.
Versions made by cas are time-sortable so the newest version is the largest.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections import namedtuple

from ..errors import InvalidTag

LATEST = "latest"
MAX_LEN = 63
# ``[a-z0-9]([a-z0-9._-]*[a-z0-9])?`` checked with set operations: compiling that regex was the largest
# part of importing this module, which every service pays on start.
_ENDS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_INNER = _ENDS | frozenset("._-")


def _well_formed(part: str) -> bool:
    return bool(part) and part[0] in _ENDS and part[-1] in _ENDS and _INNER.issuperset(part)


# Crockford's base32 alphabet, lower case: its characters sort in ASCII in
# the same order as their values, so fixed-width numbers sort as strings.
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


class Tag(namedtuple("Tag", ("name", "version"))):  # collections' namedtuple: typing costs 2 ms to import
    __slots__ = ()
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def is_latest(self) -> bool:
        return self.version == LATEST


def _check(kind: str, value: str, whole: str) -> None:
    if not value:
        raise InvalidTag(f"invalid tag {whole!r}: the {kind} is empty")
    if len(value) > MAX_LEN:
        raise InvalidTag(
            f"invalid tag {whole!r}: the {kind} has {len(value)} characters, at most {MAX_LEN} are allowed"
        )
    if not _well_formed(value):
        raise InvalidTag(
            f"invalid tag {whole!r}: the {kind} {value!r} must be lower-case letters, digits, '.', '_' "
            "or '-', starting and ending with a letter or digit"
        )


def validate_name(name: str) -> str:
    _check("name", name, name)
    return name


def validate_version(version: str, *, whole: str | None = None) -> str:
    if len(version) > MAX_LEN or not _well_formed(version):
        _check("version", version, whole or version)
    if version == LATEST:
        raise InvalidTag(f"invalid tag {whole or version!r}: 'latest' is reserved and cannot be a stored version")
    return version


def parse(tag: str | Tag) -> Tag:
    """Parse ``name`` or ``name:version``; a bare name means ``name:latest``."""
    if isinstance(tag, Tag):
        return tag
    name, version = split(tag)
    return Tag(name, version or LATEST)


def split(tag: str) -> tuple[str, str | None]:
    """Parse ``name[:version]`` into a checked name and version (None when absent)."""
    if not isinstance(tag, str):
        raise InvalidTag(f"invalid tag {tag!r}: expected a string like 'name:version'")
    name, sep, version = tag.partition(":")
    _check("name", name, tag)
    if sep:
        _check("version", version, tag)
    return name, version if sep else None


_last_ms = 0


def new_version() -> str:
    """A fresh version: 10 base32 digits of milliseconds, then 6 random ones.

    ULID-like: versions made later sort higher; within one process they are
    strictly increasing even inside one millisecond.
    """
    global _last_ms
    _last_ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
    rand = int.from_bytes(os.urandom(4), "big") >> 2
    return _b32(_last_ms, 10) + _b32(rand, 6)


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, r = divmod(value, 32)
        out.append(_B32[r])
    return "".join(reversed(out))


def covers(patterns: tuple[str, ...], tag: Tag) -> bool:
    """Whether a trust pattern matches ``tag``: one with a ``:`` the whole tag (``classifier:v*``), one without
    the name (``classifier*``)."""
    return any(fnmatch.fnmatchcase(str(tag) if ":" in p else tag.name, p) for p in patterns)
