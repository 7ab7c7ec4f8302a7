"""Writing a repository's trust documents: set up, delegate, sign tags, refresh the state.

Every change ends by replacing ``trust/state`` with compare-and-set from
the state it was computed from; new root and role versions are created
before it (never overwritten), so a reader sees the old state or the new
one, and two publishers racing both land, one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import blake3

from ..content.tags import Tag
from ..errors import InvalidInput, NotFound, Untrusted
from ..repo.format import trust_role_key, trust_root_key, trust_state_key
from ..repo.repository import Repository
from .documents import (
    MAX_BYTES,
    Grant,
    Role,
    RoleMeta,
    Root,
    State,
    Target,
    decode_role,
    decode_root,
    decode_state,
    encode_role,
    encode_root,
    encode_state,
    open_envelope,
    seal,
    validate_role_name,
)
from .keys import Signer, keyid

DAY = 86400
ROOT_DAYS, ROLE_DAYS, STATE_DAYS = 365, 365, 7  # the state expires soon: a replayed one goes stale in a week
RETRIES = 20


class _Moved(Exception):
    """The state changed between reading it and replacing it: compute the change again."""


async def init(repo: Repository, root_signers: Sequence[Signer], online: list[bytes], *, root_threshold: int = 1,
               online_threshold: int = 1, online_signers: Sequence[Signer] = ()) -> bytes:  # fmt: skip
    """Set up signing in ``repo``: root version 1 and an empty state. Returns the root document (the anchor)."""
    keys = {keyid(s.public): s.public for s in root_signers} | {keyid(k): k for k in online}
    root = Root(1, _later(ROOT_DAYS), keys, Grant(tuple(keyid(s.public) for s in root_signers), root_threshold),
                Grant(tuple(keyid(k) for k in online), online_threshold), {})  # fmt: skip
    _check_grant(root.root, "the root")
    _check_grant(root.state, "the online role")
    data = seal("root", encode_root(root), _pick(root_signers, root.root, "the root"))
    if not await repo.backend.create(trust_root_key(1), data):
        raise InvalidInput(f"{repo.url} is already set up for signing ({trust_root_key(1)} exists)")
    state = State(1, _later(STATE_DAYS), 1, {})
    await repo.backend.create(trust_state_key(), _seal_state(root, state, list(online_signers) or root_signers))
    return data


async def set_role(repo: Repository, role: str, names: list[str], keys: list[bytes], threshold: int,
                   signers: Sequence[Signer]) -> Root:  # fmt: skip
    """Add or replace a role (a rotation or revocation of its keys takes effect at hosts' next pull)."""
    validate_role_name(role)
    if not names:
        raise InvalidInput(f"role {role} needs the names it may sign for (--names 'classifier*')")

    def change(root: Root) -> Root:
        all_keys = dict(root.keys) | {keyid(k): k for k in keys}
        grant = Grant(tuple(keyid(k) for k in keys), threshold, tuple(names))
        _check_grant(grant, f"role {role}")
        roles = dict(root.roles)
        roles[role] = grant
        return root.but(keys=_used(all_keys, root.root, root.state, *roles.values()), roles=roles)

    return await _new_root(repo, change, signers)


async def remove_role(repo: Repository, role: str, signers: Sequence[Signer]) -> Root:
    def change(root: Root) -> Root:
        if role not in root.roles:
            raise InvalidInput(f"{repo.url} has no role {role}")
        roles = {n: g for n, g in root.roles.items() if n != role}
        return root.but(keys=_used(root.keys, root.root, root.state, *roles.values()), roles=roles)

    return await _new_root(repo, change, signers)


async def set_keys(repo: Repository, signers: Sequence[Signer], *, root_keys: Sequence[bytes] = (),
                   root_threshold: int | None = None, online: Sequence[bytes] = (),
                   online_threshold: int | None = None) -> Root:  # fmt: skip
    """Rotate the root's or the online role's keys; the new root is signed by the old root keys and the new."""

    def change(root: Root) -> Root:
        all_keys = dict(root.keys) | {keyid(k): k for k in [*root_keys, *online]}
        new_root = Grant(tuple(keyid(k) for k in root_keys) or root.root.keys, root_threshold or root.root.threshold)
        new_state = Grant(tuple(keyid(k) for k in online) or root.state.keys, online_threshold or root.state.threshold)
        _check_grant(new_root, "the root")
        _check_grant(new_state, "the online role")
        return root.but(keys=_used(all_keys, new_root, new_state, *root.roles.values()), root=new_root,
                             state=new_state)  # fmt: skip

    return await _new_root(repo, change, signers)


async def sign(repo: Repository, signed: Iterable[tuple[Tag, str]], signers: Sequence[Signer], *,
               latest: bool = True) -> list[str]:  # fmt: skip
    """Sign each ``(name:version, root)``, and with ``latest`` make it its name's ``latest``; returns the
    roles that signed.  The role is the first one covering the tag whose keys are among ``signers``."""
    wanted = list(signed)
    for _ in range(RETRIES):
        root, state, state_bytes = await _current(repo)
        by_role: dict[str, list[tuple[Tag, str]]] = {}
        for tag, tree_root in wanted:
            by_role.setdefault(_role_for(root, tag, signers), []).append((tag, tree_root))
        metas = dict(state.roles)
        documents = {}
        for name, tags in by_role.items():
            metas[name], documents[name] = await _new_role_version(repo, root, state, name, tags, signers, latest)
        new_state = state.but(version=state.version + 1, expires=_later(STATE_DAYS), roles=metas)
        try:
            await _replace_state(repo, state_bytes, _seal_state(root, new_state, signers))
        except _Moved:
            continue
        for name, tags in by_role.items():  # where the store can show them beside the version (a registry)
            for tag, _ in tags:
                await repo.attach_signature(tag, trust_role_key(name, metas[name].version), documents[name])
        return sorted(by_role)
    raise Untrusted(f"{repo.url}: the signed state kept changing while signing; try again")


async def refresh(repo: Repository, signers: Sequence[Signer], days: float | None = None) -> State:
    """A new state version valid for ``days`` (a publish's ``STATE_DAYS`` if None); run it more often than that:
    hosts refuse a stale state."""
    for _ in range(RETRIES):
        root, state, state_bytes = await _current(repo)
        new = state.but(version=state.version + 1, expires=_later(STATE_DAYS if days is None else days))
        try:
            await _replace_state(repo, state_bytes, _seal_state(root, new, signers))
            return new
        except _Moved:
            continue
    raise Untrusted(f"{repo.url}: the signed state kept changing; try again")


async def current(repo: Repository) -> tuple[Root, State]:
    root, state, _ = await _current(repo)
    return root, state


async def is_set_up(repo: Repository) -> bool:
    """Whether ``repo`` is set up for signing (``cas trust init`` wrote its state): its hosts may refuse unsigned
    versions."""
    try:
        await repo.backend.get(trust_state_key(), limit=MAX_BYTES["state"])
    except NotFound:
        return False
    return True


async def role(repo: Repository, state: State, name: str) -> Role:
    meta = state.roles[name]
    data = await repo.backend.get(trust_role_key(name, meta.version))
    return decode_role(open_envelope(data, "role", name).payload, name)


# -- helpers ------------------------------------------------------------------------------------------


async def _current(repo: Repository) -> tuple[Root, State, bytes]:
    """The repository's newest root and state, as its publisher reads them (trusting its own repository)."""
    try:
        state_bytes = await repo.backend.get(trust_state_key())
    except NotFound:
        raise InvalidInput(f"{repo.url} is not set up for signing: run 'cas trust init {repo.url}' first") from None
    where = f"{repo.url}/{trust_state_key()}"
    state = decode_state(open_envelope(state_bytes, "state", where).payload, where)
    version = state.root_version
    while True:  # a root made after the state (a delegation whose state update was interrupted) counts too
        try:
            data = await repo.backend.get(trust_root_key(version + 1))
            version += 1
        except NotFound:
            break
    data = await repo.backend.get(trust_root_key(version))
    return decode_root(open_envelope(data, "root", trust_root_key(version)).payload, trust_root_key(version)), \
        state.but(root_version=version), state_bytes  # fmt: skip


async def _new_root(repo: Repository, change: Callable[[Root], Root], signers: Sequence[Signer]) -> Root:
    for _ in range(RETRIES):
        old, state, state_bytes = await _current(repo)
        new = change(old).but(version=old.version + 1, expires=_later(ROOT_DAYS))
        by = _pick(signers, old.root, "the root (its current keys)") + _pick(signers, new.root, "the root (new keys)")
        data = seal("root", encode_root(new), list({keyid(s.public): s for s in by}.values()))
        if not await repo.backend.create(trust_root_key(new.version), data):
            continue
        try:
            await _replace_state(repo, state_bytes, _seal_state(new, state.but(
                version=state.version + 1, expires=_later(STATE_DAYS), root_version=new.version), signers))  # fmt: skip
        except _Moved:
            await refresh(repo, signers)  # the root is out: a state naming it follows
        return new
    raise Untrusted(f"{repo.url}: its root kept changing; try again")


async def _new_role_version(repo: Repository, root: Root, state: State, name: str, tags: list[tuple[Tag, str]],
                            signers: Sequence[Signer], latest: bool) -> tuple[RoleMeta, bytes]:  # fmt: skip
    """A new signed version of role ``name`` with ``tags`` among its targets, and its document."""
    old = state.roles.get(name)
    targets = dict((await role(repo, state, name)).targets) if old else {}
    for tag, tree_root in tags:
        targets[str(tag)] = Target(tree_root)
        if latest:
            targets[f"{tag.name}:latest"] = Target(tree_root, tag.version)
    version = (old.version if old else 0) + 1
    while True:
        data = seal("role", encode_role(Role(name, version, _later(ROLE_DAYS), targets)),
                    _pick(signers, root.roles[name], f"role {name}"))  # fmt: skip
        if await repo.backend.create(trust_role_key(name, version), data):
            return RoleMeta(version, blake3.blake3(data).hexdigest()), data
        version += 1  # left by a signer that lost a race or was killed: never overwritten


def _role_for(root: Root, tag: Tag, signers: Sequence[Signer]) -> str:
    ids = {keyid(s.public) for s in signers}
    covering = [(n, g) for n, g in root.roles.items() if g.covers(tag)]
    for name, grant in covering:
        if len(ids & set(grant.keys)) >= grant.threshold:
            return name
    if not covering:
        raise InvalidInput(f"no role may sign {tag}: delegate its name first ('cas trust delegate ... --names "
                           f"'{tag.name}*')")  # fmt: skip
    names = ", ".join(f"{n} ({g.threshold} of {', '.join(k[:12] for k in g.keys)})" for n, g in covering)
    raise InvalidInput(f"the keys given cannot sign {tag}: it needs role {names}")


def _seal_state(root: Root, state: State, signers: Sequence[Signer]) -> bytes:
    return seal("state", encode_state(state), _pick(signers, root.state, "the state (the online key)"))


async def _replace_state(repo: Repository, read: bytes, new: bytes) -> None:
    def change(current: bytes | None) -> bytes:
        if current != read:
            raise _Moved
        return new

    await repo.backend.update(trust_state_key(), change)


def _pick(signers: Iterable[Signer], grant: Grant, what: str) -> list[Signer]:
    chosen = {keyid(s.public): s for s in signers if keyid(s.public) in grant.keys}
    if len(chosen) < grant.threshold:
        ids = ", ".join(k[:12] for k in grant.keys)
        raise InvalidInput(f"signing {what} needs {grant.threshold} of the keys {ids}; "
                           f"{len(chosen)} given (--sign KEY, or $CAS_SIGNING_KEY)")  # fmt: skip
    return list(chosen.values())


def _check_grant(grant: Grant, what: str) -> None:
    if not 1 <= grant.threshold <= len(set(grant.keys)):
        raise InvalidInput(f"{what}: a threshold of {grant.threshold} with {len(set(grant.keys))} keys")


def _used(keys: dict[str, bytes], *grants: Grant) -> dict[str, bytes]:
    """Only the keys some grant names: a revoked key leaves the root."""
    used = {k for g in grants for k in g.keys}
    return {k: v for k, v in keys.items() if k in used}


def _later(days: float) -> int:
    return int(time.time() + days * DAY)
