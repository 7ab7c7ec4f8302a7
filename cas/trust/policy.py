"""A host's trust policy: which roots of trust it starts from, and for which model names.

The policy is a JSON file (``CAS_TRUST``, ``Cache(trust=...)``,
``Model(tag, trust=...)``)::

    {"cas-trust": 1,
     "anchors": [{"name": "prod", "root": "<base64 of a root document>", "names": ["*"]}]}

``cas trust init --policy FILE`` writes one for the repository it sets up;
``root_file`` (a path, relative to the policy file) may stand for ``root``.
An anchor vouches only for the names its ``names`` patterns match; within
it, the root document says which role (which keys) signs which names.
The root a policy names is where this host starts: later root versions
(rotated keys, new roles) are followed from it, each signed by the last.
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

from ..content.tags import Tag, covers
from ..errors import InvalidInput

ENV = "CAS_TRUST"
MAX_POLICY_BYTES = 4 << 20


class Anchor(namedtuple("Anchor", ("name", "root", "names"), defaults=(("*",),))):
    """A root of trust: the root document this host starts from (bytes), and the names it may vouch for."""

    __slots__ = ()
    name: str
    root: bytes
    names: tuple[str, ...]

    @property
    def id(self) -> str:
        """What the host's trusted state for this anchor is kept under (``<cache>/trust/<id>``)."""
        from blake3 import blake3  # what cas hashes with; hashlib would cost a warm path 7 ms to import

        return blake3(self.root).hexdigest()[:32]

    def covers(self, tag: Tag) -> bool:
        return covers(self.names, tag)


class TrustPolicy(namedtuple("TrustPolicy", ("anchors", "where"), defaults=("the trust policy",))):
    """The anchors a host trusts; a model no anchor vouches for is refused."""

    __slots__ = ()
    anchors: tuple[Anchor, ...]
    where: str

    def anchors_for(self, tag: Tag) -> list[Anchor]:
        return [a for a in self.anchors if a.covers(tag)]

    def to_json(self) -> str:
        import binascii
        import json

        anchors = [{"name": a.name, "root": binascii.b2a_base64(a.root, newline=False).decode(), "names": list(a.names)}
                   for a in self.anchors]  # fmt: skip
        return json.dumps({"cas-trust": 1, "anchors": anchors}, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        import json  # here, not above: a warm path reads a policy's anchors as this host kept them (KnownPolicy)

        p = Path(path)
        try:
            if p.stat().st_size > MAX_POLICY_BYTES:
                raise InvalidInput(f"the trust policy {p} is larger than {MAX_POLICY_BYTES} bytes")
            doc = json.loads(p.read_bytes())
        except OSError as e:
            raise InvalidInput(f"cannot read the trust policy {p} ({ENV}): {e.strerror}") from None
        except ValueError as e:
            raise InvalidInput(f"the trust policy {p} is not JSON: {e}") from None
        return cls(_anchors(doc, p), f"the trust policy {p}")


def load(spec: str | os.PathLike[str] | TrustPolicy | None) -> TrustPolicy | None:
    """The policy given (a path or a ``TrustPolicy``), else ``$CAS_TRUST``'s, else None (no policy)."""
    if isinstance(spec, TrustPolicy):
        return spec
    if spec is None:
        spec = os.environ.get(ENV, "").strip() or None
        if spec is None:
            return None
    return TrustPolicy.from_file(spec)


def _anchors(doc: object, path: Path) -> tuple[Anchor, ...]:
    if not isinstance(doc, dict) or doc.get("cas-trust") != 1 or not isinstance(doc.get("anchors"), list):
        raise InvalidInput(f'the trust policy {path} is not a cas trust policy: {{"cas-trust": 1, "anchors": [...]}}')
    out = []
    for i, a in enumerate(doc["anchors"]):
        where = f"anchor {i + 1} of the trust policy {path}"
        if not isinstance(a, dict) or not isinstance(a.get("name", ""), str):
            raise InvalidInput(f"{where} is not an object with a name")
        names = a.get("names", ["*"])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise InvalidInput(f"{where}: names is not a list of patterns")
        out.append(Anchor(a.get("name", ""), _root_bytes(a, path, where), tuple(names)))
    if not out:
        raise InvalidInput(f"the trust policy {path} has no anchors: it would refuse every model")
    return tuple(out)


def _root_bytes(a: dict[str, object], path: Path, where: str) -> bytes:
    import binascii  # base64's own engine: the base64 module costs 2 ms to import

    text = a.get("root")
    if isinstance(text, str):
        try:
            raw = binascii.a2b_base64(text)
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or binascii.b2a_base64(raw, newline=False).decode() != text:  # strict: one encoding only
            raise InvalidInput(f"{where}: root is not base64")
        return raw
    if isinstance(a.get("root_file"), str):
        root_file = path.parent / a["root_file"]  # type: ignore[operator]
        try:
            return root_file.read_bytes()
        except OSError as e:
            raise InvalidInput(f"{where}: cannot read {root_file}: {e.strerror}") from None
    raise InvalidInput(f"{where} has neither root (base64) nor root_file")
