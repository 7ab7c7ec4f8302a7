"""What this host has verified: each anchor's newest trusted documents, and by which keys each model was verified.

Under ``<cache>/trust/<anchor id>/``: ``roots/<n>`` every root version this
host accepted, and ``state`` and ``roles/<role>`` the newest documents (a
repository, mirror or CDN serving older ones is refused: see
``cas.trust.client``; an export file carries them, ``held_for``), each
signature checked once: a pull that gets the same state checks none, and
``signers/<role>`` says which keys of the newest root signed that role's
document.  ``grants`` is
what the accepted root lets each role sign, and ``verified/<name>/<version>``
the root hash, role and keys a model was verified with.  Both are lines
of text: the warm path reads those two small files and decodes no signed
document, so a policy (or a root that revoked a key) applies to models
already here without touching the network, at about the cost of a stat.
"""

from __future__ import annotations

import contextlib
import os
from collections import namedtuple
from pathlib import Path

from ..content.ref import ModelInfo
from ..content.tags import Tag, covers
from ..errors import Untrusted

TYPE_CHECKING = False  # typing costs 2 ms to import: this module is on the warm path of a host with a policy
if TYPE_CHECKING:
    from ..trust.policy import Anchor, TrustPolicy

Verified = namedtuple("Verified", ("root", "role", "keys"))  # the tree root the signature named, its role, keys
Granted = namedtuple("Granted", ("threshold", "keys", "names"))  # what the accepted root lets a role sign


class KnownAnchor:
    """An anchor as a warm path needs it: where this host keeps its trusted state, and the names it vouches for."""

    __slots__ = ("id", "names")

    def __init__(self, anchor_id: str, names: tuple[str, ...]):
        self.id, self.names = anchor_id, names

    def covers(self, tag: Tag) -> bool:
        return covers(self.names, tag)


class KnownPolicy:
    """A policy's anchors without their roots (``TrustedState.known_policy``): enough to say whether a model
    here was verified under it, without parsing the policy's JSON nor hashing its roots."""

    __slots__ = ("anchors", "where")

    def __init__(self, anchors: tuple[KnownAnchor, ...], where: str):
        self.anchors, self.where = anchors, where

    def anchors_for(self, tag: Tag) -> list[KnownAnchor]:
        return [a for a in self.anchors if a.covers(tag)]


class TrustedState:
    """One cache's trusted documents and verification records, per anchor."""

    def __init__(self, cache_root: str | os.PathLike[str], durable: bool = True):
        self.root, self.durable = Path(cache_root) / "trust", durable
        self._grants: dict[str, tuple[float, dict[str, Granted]]] = {}

    def read(self, anchor: Anchor, name: str) -> bytes | None:
        try:
            return (self.root / anchor.id / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, anchor: Anchor, name: str, data: bytes, *, durable: bool = False) -> None:
        """Documents are kept without fsync, as python-tuf's client keeps its metadata: a power loss may make
        this host forget the newest state it saw (it then accepts no older one than before), never tear one."""
        from ..system.files import atomic_write

        atomic_write(self.root / anchor.id / name, data, self.root / ".tmp", durable=durable)

    def accept_root(self, anchor: Anchor, version: int,
                    roles: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]], data: bytes) -> None:  # fmt: skip
        """Record a root this host now trusts: its document, and what it lets each role sign.  Which keys signed
        each role document was checked under the root before: it is forgotten, to be checked again."""
        self.write(anchor, f"roots/{version}", data)
        for name in _names(self.root / anchor.id / "signers"):
            (self.root / anchor.id / "signers" / name).unlink(missing_ok=True)
        lines = [f"{role}\t{t}\t{','.join(keys)}\t{chr(31).join(names)}\n" for role, (t, keys, names) in roles.items()]
        self.write(anchor, "grants", "".join(lines).encode())

    def checked_role(self, anchor: Anchor, role: str, digest: str, keys: frozenset[str]) -> None:
        """Which of the newest root's keys signed the role document of hash ``digest`` (just checked)."""
        text = f"{digest}\n{','.join(sorted(keys))}\n".encode()
        if self.read(anchor, f"signers/{role}") != text:
            self.write(anchor, f"signers/{role}", text)

    def role_signers(self, anchor: Anchor, role: str, digest: str) -> frozenset[str] | None:
        """The keys ``checked_role`` recorded for that document under the newest root; None if not checked."""
        lines = (self.read(anchor, f"signers/{role}") or b"").decode(errors="replace").split("\n")
        if len(lines) != 3 or lines[0] != digest:
            return None
        return frozenset(k for k in lines[1].split(",") if k)

    def known_policy(self, key: str, where: str) -> KnownPolicy | None:
        """The anchors of the policy file whose ``file_key`` is ``key``, as this host kept them when it last read
        that very file (``remember_policy``): a warm path then neither parses JSON nor hashes a root."""
        try:
            lines = (self.root / "policies" / key).read_text(errors="replace").splitlines()
        except OSError:
            return None
        anchors = [line.split("\t") for line in lines]
        if not anchors or any(len(a) < 2 for a in anchors):
            return None
        return KnownPolicy(tuple(KnownAnchor(a[0], tuple(a[1:])) for a in anchors), where)

    def remember_policy(self, key: str, policy: TrustPolicy) -> None:
        """Keep ``policy``'s anchors (ids and names) for ``known_policy``; best effort (a read-only cache)."""
        if any(set(n) & {"\t", "\n", "\r"} for a in policy.anchors for n in a.names):
            return  # no tag has these: such a pattern never matches, and the file is read whole each time
        text = "".join("\t".join((a.id, *a.names)) + "\n" for a in policy.anchors)
        from ..system.files import atomic_write

        with contextlib.suppress(OSError):
            atomic_write(self.root / "policies" / key, text.encode(), self.root / ".tmp", durable=False)

    def has_grants(self, anchor: Anchor) -> bool:
        return (self.root / anchor.id / "grants").is_file()

    def newest_root(self, anchor: Anchor) -> bytes | None:
        """The newest root version this host accepted for ``anchor`` (None: none yet, start from the anchor's)."""
        versions = [int(n) for n in _names(self.root / anchor.id / "roots") if n.isdigit()]
        return self.read(anchor, f"roots/{max(versions)}") if versions else None

    def held_for(self, info: ModelInfo) -> dict[str, bytes]:
        """The documents of the first anchor that verified ``info``, by their names here (``roots/<n>``,
        ``state``, ``roles/<role>``): what an export file carries so another host can verify it in turn."""
        for anchor_id in sorted(n for n in _names(self.root) if not n.startswith(".")):
            here = self.root / anchor_id
            v = _verified(here / "verified" / info.name / info.version)
            if v is None or v.root != info.root or not (here / "state").is_file():
                continue
            found = {"state": (here / "state").read_bytes()}
            for kind in ("roots", "roles"):
                found |= {f"{kind}/{n}": (here / kind / n).read_bytes() for n in _names(here / kind)}
            return found
        return {}

    def record(self, anchor: Anchor, tag: Tag, verified: Verified) -> None:
        text = f"{verified.root}\n{verified.role}\n{','.join(verified.keys)}\n"
        # durable with the ref it vouches for: an offline host must not lose it to a power cut
        self.write(anchor, f"verified/{tag.name}/{tag.version}", text.encode(), durable=self.durable)

    def verified(self, anchor: Anchor | KnownAnchor, info: ModelInfo) -> Verified | None:
        return _verified(self.root / anchor.id / "verified" / info.name / info.version)

    def grants(self, anchor: Anchor | KnownAnchor) -> dict[str, Granted]:
        """What the newest root this host accepted for ``anchor`` lets each role sign."""
        path = self.root / anchor.id / "grants"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return {}
        cached = self._grants.get(anchor.id)
        if cached and cached[0] == mtime:
            return cached[1]
        out = {}
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) == 4 and fields[1].isdigit():
                out[fields[0]] = Granted(int(fields[1]), tuple(fields[2].split(",")), tuple(fields[3].split(chr(31))))
        self._grants[anchor.id] = (mtime, out)
        return out

    def check(self, policy: TrustPolicy | KnownPolicy, info: ModelInfo) -> ModelInfo:
        """``info`` if ``policy`` vouches for it, else ``Untrusted`` saying what to do."""
        if self.vouches(policy, info):
            return info
        raise Untrusted(f"{info.tag} in {self.root.parent} was not verified under {policy.where} (stored "
                        "without a signature, or with a key it no longer trusts); pull it from a signed "
                        "repository")  # fmt: skip

    def vouches(self, policy: TrustPolicy | KnownPolicy, info: ModelInfo) -> bool:
        """Whether a stored model was verified under ``policy`` by keys its anchor's root still trusts for it."""
        tag = Tag(info.name, info.version)
        for anchor in policy.anchors_for(tag):
            v = self.verified(anchor, info)
            if v is None or v.root != info.root:
                continue
            grant = self.grants(anchor).get(v.role)
            if grant and covers(grant.names, tag) and len(set(v.keys) & set(grant.keys)) >= grant.threshold:
                return True
        return False


def policy_key(path: str | os.PathLike[str]) -> str:
    """A policy file's identity (device, inode, size, modification time): taken before the file is read, a
    file changed since gets another key, so a kept summary is never of another content than its key's."""
    st = os.stat(path)
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _verified(path: Path) -> Verified | None:
    try:
        lines = path.read_bytes().decode(errors="replace").split("\n")
    except FileNotFoundError:
        return None
    if len(lines) != 4:
        return None  # damaged: verified again on the next pull
    return Verified(lines[0], lines[1], tuple(k for k in lines[2].split(",") if k))


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
