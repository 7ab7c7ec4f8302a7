"""The three signed trust documents of a repository, as bytes (pure functions; see ``cas.trust``).

Each is an envelope ``[1, kind, payload, [[keyid, signature], ...]]`` in
msgpack; the payload is the msgpack of the document itself, and each
signature is Ed25519 over ``b"cas-trust/1\\0" + kind + b"\\0" + payload``:
the exact bytes signed are the bytes decoded (no canonical form to get
wrong), and a document of one kind cannot pass for another.

- ``root``: the keys, and which of them (how many) may sign the root
  itself, the state, and each role with the names it may sign for.
- ``role``: one role's targets: tag -> the root hash of its tree (``name:latest``
  also names its version).
- ``state``: the version and hash of every role document and the root's
  version, signed by the online key; it expires soon, so a replayed one
  goes stale.

Every document may come from a hostile repository: sizes are bounded,
every field is type-checked, and nothing is trusted before its signatures
are counted against a root this host already trusts.
"""

from __future__ import annotations

import re
import time
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import msgpack

from ..content.tags import Tag, covers
from ..errors import InvalidManifest, Untrusted
from .keys import Signer, keyid

FORMAT = 1
KINDS = ("root", "role", "state")
MAX_BYTES = {"root": 1 << 20, "state": 1 << 20, "role": 16 << 20}  # a hostile server's endless answer stops here
MAX_SIGNATURES = 64
MAX_ROOT_CHAIN = 1000  # root versions a host walks at once
_HEX = re.compile(r"[0-9a-f]{64}")
_ROLE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


# collections' namedtuple rather than dataclasses: the warm path of a host with a policy imports this module,
# and dataclasses (inspect) would cost it milliseconds.
Envelope = namedtuple("Envelope", ("kind", "payload", "signatures"))  # signatures: ((keyid, signature), ...)


class Grant(namedtuple("Grant", ("keys", "threshold", "names"), defaults=((),))):
    """Who may sign: ``threshold`` of ``keys`` (key ids); for a role, only tags matching ``names``."""

    __slots__ = ()
    keys: tuple[str, ...]
    threshold: int
    names: tuple[str, ...]

    def covers(self, tag: Tag) -> bool:
        return covers(self.names, tag)


# keys: keyid -> raw public key; roles: name -> Grant, in order (the first role covering a tag is asked first)
class Root(namedtuple("Root", ("version", "expires", "keys", "root", "state", "roles"))):
    __slots__ = ()

    def but(self, **changes: Any) -> Root:
        return self._replace(**changes)


Target = namedtuple("Target", ("root", "version"), defaults=("",))  # version: set for name:latest, the version it is
Role = namedtuple("Role", ("name", "version", "expires", "targets"))  # targets: tag -> Target
RoleMeta = namedtuple("RoleMeta", ("version", "digest"))  # digest: BLAKE3 of the role's envelope bytes


class State(namedtuple("State", ("version", "expires", "root_version", "roles"))):  # roles: name -> RoleMeta
    __slots__ = ()

    def but(self, **changes: Any) -> State:
        return self._replace(**changes)


# -- envelopes --------------------------------------------------------------------------------------


def signing_input(kind: str, payload: bytes) -> bytes:
    return b"cas-trust/1\0" + kind.encode() + b"\0" + payload


def seal(kind: str, payload: bytes, signers: Sequence[Signer]) -> bytes:
    data = signing_input(kind, payload)
    sigs = [[bytes.fromhex(keyid(s.public)), s.sign(data)] for s in signers]
    return msgpack.packb([FORMAT, kind, payload, sigs], use_bin_type=True)


def open_envelope(data: bytes, kind: str, where: str) -> Envelope:
    """The envelope of a ``kind`` document, checked for shape only (its signatures are counted by ``signed_by``)."""
    if len(data) > MAX_BYTES[kind]:
        raise Untrusted(f"{where}: {len(data)} bytes, more than a {kind} document may have")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BYTES[kind],
                              max_array_len=MAX_SIGNATURES + 4)  # fmt: skip
        fmt, got_kind, payload, sigs = doc
        if fmt != FORMAT or got_kind != kind or not isinstance(payload, bytes) or not isinstance(sigs, list):
            raise ValueError(f"not a cas {kind} document")
        signatures = tuple((_bytes(k, 32).hex(), _bytes(s, 64)) for k, s in sigs)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Untrusted(f"{where}: not a cas {kind} document ({_said(e)})") from None
    return Envelope(kind, payload, signatures)


def signed_by(env: Envelope, keys: dict[str, bytes], grant: Grant, where: str) -> frozenset[str]:
    """The keys of ``grant`` with a valid signature on ``env``; fewer than its threshold is ``Untrusted``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = signing_input(env.kind, env.payload)
    good = set()
    for kid, sig in env.signatures:
        if kid in grant.keys and kid in keys and kid not in good:
            try:
                Ed25519PublicKey.from_public_bytes(keys[kid]).verify(sig, data)
                good.add(kid)
            except InvalidSignature:
                continue
    if len(good) < grant.threshold:
        raise Untrusted(f"{where}: signed by {len(good)} of the keys trusted for it, {grant.threshold} needed")
    return frozenset(good)


def check_fresh(expires: int, where: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if expires <= now:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
        raise Untrusted(f"{where} expired at {when}: the repository serves a stale state (a replay, or its "
                        "publisher has not run 'cas trust refresh'); nothing was pulled")  # fmt: skip


# -- payloads --------------------------------------------------------------------------------------


def encode_root(r: Root) -> bytes:
    return _pack({"version": r.version, "expires": r.expires, "keys": dict(sorted(r.keys.items())),
                  "root": _grant(r.root), "state": _grant(r.state),
                  "roles": [[name, _grant(g)] for name, g in r.roles.items()]})  # fmt: skip


def decode_root(payload: bytes, where: str) -> Root:
    def build(d: dict[str, Any]) -> Root:
        keys = {_hex(k): _bytes(v, 32) for k, v in _map(d["keys"]).items()}
        if any(keyid(v) != k for k, v in keys.items()):
            raise ValueError("a key's id is not the hash of the key")
        roles = {_role_name(n): _ungrant(g, keys, role=True) for n, g in _list(d["roles"])}
        return Root(_int(d["version"]), _int(d["expires"]), keys, _ungrant(d["root"], keys),
                    _ungrant(d["state"], keys), roles)  # fmt: skip

    return _decode(payload, "root", where, build)


def encode_role(r: Role) -> bytes:
    targets = {t: [x.root, x.version] for t, x in sorted(r.targets.items())}
    return _pack({"role": r.name, "version": r.version, "expires": r.expires, "targets": targets})


def decode_role(payload: bytes, where: str) -> Role:
    def build(d: dict[str, Any]) -> Role:
        targets = {}
        for tag, (root, version) in _map(d["targets"]).items():
            if not isinstance(tag, str) or not isinstance(version, str) or len(tag) > 130 or len(version) > 63:
                raise ValueError("a target is not a tag")
            targets[tag] = Target(_hex(root), version)
        return Role(_role_name(d["role"]), _int(d["version"]), _int(d["expires"]), targets)

    return _decode(payload, "role", where, build)


def encode_state(s: State) -> bytes:
    roles = {n: [m.version, m.digest] for n, m in sorted(s.roles.items())}
    return _pack({"version": s.version, "expires": s.expires, "root": s.root_version, "roles": roles})


def decode_state(payload: bytes, where: str) -> State:
    def build(d: dict[str, Any]) -> State:
        roles = {_role_name(n): RoleMeta(_int(v), _hex(h)) for n, (v, h) in _map(d["roles"]).items()}
        return State(_int(d["version"]), _int(d["expires"]), _int(d["root"]), roles)

    return _decode(payload, "state", where, build)


def validate_role_name(name: str) -> str:
    if not isinstance(name, str) or not _ROLE.fullmatch(name):
        raise InvalidManifest(f"{name!r} is not a role name: lower-case letters, digits, '.', '_', '-'")
    return name


# -- helpers ------------------------------------------------------------------------------------------


def _pack(d: dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def _grant(g: Grant) -> dict[str, Any]:
    return {"keys": sorted(g.keys), "threshold": g.threshold, "names": list(g.names)}


def _ungrant(d: Any, keys: dict[str, bytes], *, role: bool = False) -> Grant:
    d = _map(d)
    ids = tuple(_hex(k) for k in _list(d["keys"]))
    names = tuple(n for n in _list(d.get("names", [])) if isinstance(n, str) and 0 < len(n) <= 130)
    threshold = _int(d["threshold"])
    if not 1 <= threshold <= len(set(ids)) or any(k not in keys for k in ids):
        raise ValueError("a threshold is not between 1 and its number of known keys")
    if role and len(names) != len(_list(d.get("names", []))):
        raise ValueError("a role's names are not all patterns")
    return Grant(ids, threshold, names)


def _decode(payload: bytes, kind: str, where: str, build: Any) -> Any:
    try:
        d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        return build(_map(d))
    except (ValueError, TypeError, KeyError, InvalidManifest, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as e:  # fmt: skip
        raise Untrusted(f"{where}: a signed {kind} document that does not decode ({_said(e)})") from None


def _said(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _map(v: Any) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise TypeError("a map was expected")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError("a list was expected")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 62:
        raise TypeError("a count was expected")
    return v


def _hex(v: Any) -> str:
    if not isinstance(v, str) or not _HEX.fullmatch(v):
        raise ValueError("a 64-digit hex digest was expected")
    return v


def _bytes(v: Any, n: int) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        raise ValueError(f"{n} bytes were expected")
    return v


def _role_name(v: Any) -> str:
    if not isinstance(v, str) or not _ROLE.fullmatch(v):
        raise ValueError("a role name was expected")
    return v
