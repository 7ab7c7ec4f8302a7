"""What this host has verified: each anchor's newest trusted documents, and by which keys each model was verified.

Under ``<cache>/trust/<anchor id>/``: ``root``, ``state`` and ``roles/<role>``
are the newest documents this host accepted (a repository, mirror or CDN
serving older ones is refused: see ``cas.trust.client``), and
``verified/<name>/<version>`` records the root hash, role and keys a model
was verified with.  The warm path reads only that record and the trusted
root, so a policy (or a root that revoked a key) applies to models already
here without touching the network.
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import msgpack

from ..errors import Untrusted
from ..fsutil import atomic_write
from ..ref import ModelInfo
from ..tags import Tag
from ..trust.documents import Root, decode_root, open_envelope
from ..trust.policy import Anchor, TrustPolicy

Verified = namedtuple("Verified", ("root", "role", "keys"))  # the tree root the signature named, its role, keys


class TrustedState:
    """One cache's trusted documents and verification records, per anchor."""

    def __init__(self, cache_root: str | os.PathLike[str]):
        self.root = Path(cache_root) / "trust"
        self._roots: dict[str, tuple[float, Root]] = {}

    def read(self, anchor: Anchor, name: str) -> bytes | None:
        try:
            return (self.root / anchor.id / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, anchor: Anchor, name: str, data: bytes) -> None:
        atomic_write(self.root / anchor.id / name, data, self.root / ".tmp")

    def record(self, anchor: Anchor, tag: Tag, verified: Verified) -> None:
        data = msgpack.packb([verified.root, verified.role, list(verified.keys)])
        self.write(anchor, f"verified/{tag.name}/{tag.version}", data)

    def verified(self, anchor: Anchor, info: ModelInfo) -> Verified | None:
        data = self.read(anchor, f"verified/{info.name}/{info.version}")
        if data is None:
            return None
        try:
            root, role, keys = msgpack.unpackb(data)
            return Verified(root, role, tuple(keys))
        except (ValueError, TypeError):
            return None  # a damaged record: verified again on the next pull

    def trusted_root(self, anchor: Anchor) -> Root:
        """The newest root this host accepted for ``anchor`` (its own copy, checked when it was accepted)."""
        path = self.root / anchor.id / "root"
        try:
            mtime = path.stat().st_mtime
            data = path.read_bytes()
        except FileNotFoundError:
            mtime, data = 0.0, anchor.root
        cached = self._roots.get(anchor.id)
        if cached and cached[0] == mtime:
            return cached[1]
        root = decode_root(open_envelope(data, "root", f"the trusted root of {anchor.name}").payload, anchor.name)
        self._roots[anchor.id] = (mtime, root)
        return root

    def vouches(self, policy: TrustPolicy, info: ModelInfo) -> bool:
        """Whether a stored model was verified under ``policy`` by keys its anchor's root still trusts for it."""
        tag = Tag(info.name, info.version)
        for anchor in policy.anchors_for(tag):
            v = self.verified(anchor, info)
            if v is None or v.root != info.root:
                continue
            try:
                grant = self.trusted_root(anchor).roles.get(v.role)
            except Untrusted:
                continue
            if grant and grant.covers(tag) and len(set(v.keys) & set(grant.keys)) >= grant.threshold:
                return True
        return False
