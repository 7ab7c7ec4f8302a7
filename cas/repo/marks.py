"""The prune marks: what a prune found no ref reaching, since when, kept in the repository itself.

One small document, replaced only by compare-and-set (``update``), so a
prune and the pushes and removals racing it see each other's changes::

    prune/marks   [1, marked, deleting, removed]
        marked    [[key, marked at], ...]     unreachable when a prune looked; deleted after the grace period
        deleting  [[key, since], ...]         committed for deletion: a push must not reuse these any more
        removed   [[root, removed at], ...]   roots of refs ``rm --remote`` removed: still live for a grace period

Keys are ``trees/<root>``, ``locators/<root>`` and ``packs/<id>`` (the pack
with its index).  Times are seconds since the epoch, on the clock of the
host that wrote them.  The protocol is ``cas.sync.prune``'s; a push takes part
by ``reserving`` what it reuses (see ``Repository.reserve``).  Decoding is
strict: the document may come from a hostile server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import NamedTuple

import msgpack

from ..errors import InvalidManifest
from .format import FORMAT, check_key

MARKABLE = ("tree", "locator", "pack")
MAX_ENTRIES = 1 << 22


class Marks(NamedTuple):
    marked: dict[str, float]
    deleting: dict[str, float]
    removed: dict[str, float]


EMPTY = Marks({}, {}, {})


def encode(marks: Marks) -> bytes:
    return msgpack.packb([FORMAT, *([[k, float(t)] for k, t in sorted(part.items())] for part in marks)],
                         use_bin_type=True)  # fmt: skip


def decode(data: bytes | None) -> Marks:
    """The marks in ``data``; no document (None) is no marks."""
    if data is None:
        return EMPTY
    try:
        doc = msgpack.unpackb(data, raw=False, max_map_len=0, max_ext_len=0, max_bin_len=0, max_str_len=80,
                              max_array_len=MAX_ENTRIES)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - every msgpack failure means "malformed"
        raise InvalidManifest(f"the prune marks are not valid msgpack ({type(e).__name__})") from None
    if not (isinstance(doc, list) and len(doc) == 4 and doc[0] == FORMAT):
        raise InvalidManifest(f"the prune marks are not a format-{FORMAT} document")
    marked, deleting, removed = (_entries(part) for part in doc[1:])
    for key in itertools.chain(marked, deleting):
        if check_key(key)[0] not in MARKABLE:
            raise InvalidManifest(f"the prune marks name {key!r:.80}, which a prune never marks")
    for root in removed:
        check_key(f"trees/{root}")
    return Marks(marked, deleting, removed)


def reserved(data: bytes | None, keys: Iterable[str]) -> bytes | None:
    """The marks with ``keys`` unmarked (a push reuses them), or None when none of them is marked."""
    marks = decode(data)
    hit = set(keys) & set(marks.marked)
    if not hit:
        return None
    return encode(Marks({k: t for k, t in marks.marked.items() if k not in hit}, marks.deleting, marks.removed))


def with_removed(data: bytes | None, roots: Iterable[str], when: float) -> bytes:
    """The marks with ``roots`` recorded as removed at ``when``."""
    marks = decode(data)
    return encode(Marks(marks.marked, marks.deleting, {**marks.removed, **dict.fromkeys(roots, when)}))


def _entries(part: object) -> dict[str, float]:
    if not isinstance(part, list) or not all(_entry(e) for e in part):
        raise InvalidManifest("the prune marks hold an entry that is not [key, time]")
    if any(a[0] >= b[0] for a, b in itertools.pairwise(part)):
        raise InvalidManifest("the prune marks are not sorted, or repeat a key")
    return {k: float(t) for k, t in part}


def _entry(e: object) -> bool:
    return (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], (int, float))
            and not isinstance(e[1], bool) and math.isfinite(e[1]) and e[1] >= 0)  # fmt: skip
