"""Verifying a tag against a repository's signed documents, under a host's trust policy.

One pull reads ``trust/state`` (one small request), the role document
that covers the tag only when its version changed since this host last
saw it, and new root versions only when the state names a newer root.
The answer, a ``Verdict``, names the root hash the tag must have: the
pull then refuses a ref or a tree that does not match it.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Protocol

import blake3

from ..content.tags import Tag
from ..errors import CasError, NotFound, Untrusted
from ..local.trusted import TrustedState, Verified
from ..repo.format import trust_role_key, trust_root_key, trust_state_key
from .documents import (
    MAX_BYTES,
    MAX_ROOT_CHAIN,
    Role,
    Root,
    State,
    check_fresh,
    decode_role,
    decode_root,
    decode_state,
    open_envelope,
    signed_by,
)
from .policy import Anchor, TrustPolicy

# tag: the version to pull (latest resolved by the signature, not by the repository's listing)
Verdict = namedtuple("Verdict", ("anchor", "tag", "verified"))


class Documents(Protocol):
    """Where signed documents come from: a repository (``Repository``), or an export file (``cas.trust.bundle``)."""

    @property
    def url(self) -> str: ...

    async def document(self, key: str, limit: int) -> bytes: ...


async def verify(repo: Documents, policy: TrustPolicy, state: TrustedState, tag: Tag) -> Verdict:
    """The version and root hash ``tag`` must have, as signed by keys ``policy`` trusts for it."""
    anchors = policy.anchors_for(tag)
    if not anchors:
        raise Untrusted(f"{policy.where} trusts no one for {tag.name}: it has no anchor whose names match it")
    failures = []
    for anchor in anchors:
        try:
            return await _Check(repo, anchor, state).run(tag)
        except Untrusted as e:
            failures.append(str(e))
    raise Untrusted(failures[0] if len(failures) == 1 else "; ".join(failures))


def _grants(root: Root) -> dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]]:
    return {name: (g.threshold, tuple(g.keys), tuple(g.names)) for name, g in root.roles.items()}


class _Check:
    def __init__(self, repo: Documents, anchor: Anchor, state: TrustedState):
        self.repo, self.anchor, self.state = repo, anchor, state
        self._ahead: dict[int, asyncio.Future[bytes]] = {}  # root documents asked for before they are needed

    async def run(self, tag: Tag) -> Verdict:
        # the trusted root is read (and on first use cryptography imported to check it) while the state is on its
        # way; on first use the root after the policy's is asked for too: publishers who delegate names make one
        self._ahead = self._first_use_root_ahead()
        try:
            state_bytes, (root, root_bytes) = await asyncio.gather(self._get(trust_state_key(), "state"),
                                                                   asyncio.to_thread(self._trusted_root))  # fmt: skip
            return await self._check(tag, state_bytes, root, root_bytes)
        finally:
            for task in self._ahead.values():
                task.cancel()
            await asyncio.gather(*self._ahead.values(), return_exceptions=True)

    def _first_use_root_ahead(self) -> dict[int, asyncio.Future[bytes]]:
        if self.state.has_grants(self.anchor):
            return {}
        try:  # read unchecked, only to know which version comes next; _trusted_root checks it
            version = decode_root(open_envelope(self.anchor.root, "root", "").payload, "").version + 1
        except CasError:
            return {}
        return {version: asyncio.ensure_future(self._get(trust_root_key(version), "root"))}

    async def _check(self, tag: Tag, state_bytes: bytes, root: Root, root_bytes: bytes) -> Verdict:
        where = f"{self.repo.url}/{trust_state_key()}"
        env = open_envelope(state_bytes, "state", where)
        claimed = decode_state(env.payload, where)  # read before its signature is checked: only to find its root
        if not self.state.has_grants(self.anchor):  # first use: start from the anchor's root (kept for exports)
            self.state.accept_root(self.anchor, root.version, _grants(root), root_bytes)
        if claimed.root_version > root.version:
            root = await self._newer_root(root, claimed.root_version)
        elif claimed.root_version < root.version:
            raise Untrusted(f"{where} names root version {claimed.root_version}, older than the version "
                            f"{root.version} this host trusts: a rollback; nothing was pulled")  # fmt: skip
        seen = self.state.read(self.anchor, "state")
        if state_bytes != seen:  # the state this host accepted last was checked then: the usual pull checks none
            signed_by(env, root.keys, root.state, where)
        check_fresh(root.expires, f"root version {root.version} of {self.anchor.name}")
        self._accept_state(claimed, state_bytes, seen, where)
        for role_name, grant in root.roles.items():
            meta = claimed.roles.get(role_name)
            if not grant.covers(tag) or meta is None:
                continue
            role, keys = await self._role(root, role_name, meta)
            found = role.targets.get(str(tag))
            if found is None:
                continue
            concrete = Tag(tag.name, found.version) if tag.is_latest else tag
            signed = role.targets.get(str(concrete))
            if signed is None or signed.root != found.root or not grant.covers(concrete):
                raise Untrusted(f"{tag} names {concrete}, which {role_name} did not sign with the same root")
            return Verdict(self.anchor, concrete, Verified(found.root, role_name, tuple(sorted(keys))))
        raise Untrusted(f"{tag} is not signed in {self.repo.url} by any key that {self.anchor.name} trusts for "
                        f"{tag.name}; refusing it (sign it with 'cas sign', or pull a signed version)")  # fmt: skip

    def _trusted_root(self) -> tuple[Root, bytes]:
        """The newest root this host accepted (its signatures were checked then), else the policy's."""
        stored = self.state.newest_root(self.anchor)
        data = stored or self.anchor.root
        where = f"the trusted root of {self.anchor.name}"
        env = open_envelope(data, "root", where)
        root = decode_root(env.payload, where)
        if stored is None:
            signed_by(env, root.keys, root.root, where)
        return root, data

    async def _newer_root(self, root: Root, version: int) -> Root:
        """Walk root versions up to ``version``, each signed by the keys of the last and by its own."""
        if version - root.version > MAX_ROOT_CHAIN:
            raise Untrusted(f"{self.repo.url} names root version {version}, {MAX_ROOT_CHAIN}+ ahead of this host's")
        for v in range(root.version + 1, version + 1):
            ahead = self._ahead.pop(v, None)
            data = await (ahead or self._get(trust_root_key(v), "root"))
            where = f"{self.repo.url}/{trust_root_key(v)}"
            env = open_envelope(data, "root", where)
            new = decode_root(env.payload, where)
            if new.version != v:
                raise Untrusted(f"{where} says it is version {new.version}")
            signed_by(env, root.keys, root.root, f"{where} (by the keys of root version {root.version})")
            signed_by(env, new.keys, new.root, where)
            self.state.accept_root(self.anchor, v, _grants(new), data)
            root = new
        return root

    def _accept_state(self, state: State, data: bytes, seen: bytes | None, where: str) -> None:
        """Never older than what this host has seen; expired is stale (a replay, or a frozen repository)."""
        if seen is not None:
            old = decode_state(open_envelope(seen, "state", "this host's state").payload, "this host's state")
            if state.version < old.version:
                raise Untrusted(f"{where} is version {state.version}, older than the version {old.version} this "
                                "host has seen: a rollback (or a stale mirror); nothing was pulled")  # fmt: skip
            if state.version == old.version and data != seen:
                raise Untrusted(f"{where}: two different states both say they are version {state.version}")
        check_fresh(state.expires, f"{where} (version {state.version})")
        if data != seen:
            self.state.write(self.anchor, "state", data)

    async def _role(self, root: Root, name: str, meta: tuple[int, str]) -> tuple[Role, frozenset[str]]:
        version, digest = meta
        key = trust_role_key(name, version)
        where = f"{self.repo.url}/{key}"
        stored = self.state.read(self.anchor, f"roles/{name}")
        fetched = stored is None or blake3.blake3(stored).hexdigest() != digest
        data = await self._get(key, "role") if fetched or stored is None else stored
        if fetched:
            if blake3.blake3(data).hexdigest() != digest:
                raise Untrusted(f"{where} is not the version the signed state names (a mix of two states, or a "
                                "stale cache in front of the repository); nothing was pulled")  # fmt: skip
        env = open_envelope(data, "role", where)
        keys = None if fetched else self.state.role_signers(self.anchor, name, digest)
        if keys is None:  # checked once per document and root: a new root forgets what the old one checked
            keys = signed_by(env, root.keys, root.roles[name], where)
        role = decode_role(env.payload, where)
        if role.name != name or role.version != version:
            raise Untrusted(f"{where} says it is {role.name} version {role.version}")
        check_fresh(role.expires, where)
        if fetched:
            self.state.write(self.anchor, f"roles/{name}", data)
        self.state.checked_role(self.anchor, name, digest, keys)
        return role, keys

    async def _get(self, key: str, kind: str) -> bytes:
        try:
            return await self.repo.document(key, MAX_BYTES[kind])
        except NotFound:
            if kind == "state":
                raise Untrusted(f"{self.repo.url} has no signatures ({key} is missing), and the trust policy asks for "
                                "them; nothing was pulled (publish with 'cas push --sign')") from None  # fmt: skip
            raise Untrusted(f"{self.repo.url}/{key} is missing, though the signed state names it") from None
