"""What a repository's signatures say of each version in it: ``cas verify --remote URL --signatures``.

With a trust policy, each version is checked exactly as a pull would
check it (the host's trusted state, its rollback and expiry rules).
Without one, the report trusts the repository's own first root and walks
its root versions from there, each signed by the last (trust on first
use, in a scratch state that this host keeps nothing of): it says which
role signed what, what is unsigned, and where the listing's ``latest`` is
not the signed one, which is what a hostile repository would change.
"""

from __future__ import annotations

import tempfile
from collections import namedtuple
from typing import TYPE_CHECKING

from ..content.tags import Tag
from ..errors import NotFound, Untrusted
from ..local.trusted import TrustedState
from ..repo.format import trust_root_key
from ..repo.repository import Repository, remote_url, run_with_repository
from .client import verify
from .documents import MAX_BYTES
from .policy import Anchor, TrustPolicy

if TYPE_CHECKING:
    from ..content.ref import ModelInfo
    from ..local.cache import LocalCache

Finding = namedtuple("Finding", ("tag", "role", "keys", "problem"))  # role and keys when signed, else the problem


class SignatureReport(namedtuple("SignatureReport", ("under", "findings", "latest"))):
    """``under``: what the signatures were checked against; ``latest``: names whose listing's newest version
    is not the one their signatures make ``latest``."""

    __slots__ = ()

    @property
    def ok(self) -> bool:
        return not self.latest and all(not f.problem for f in self.findings)


def signature_report(cache: LocalCache, remote: str | None = None) -> SignatureReport:
    """Every version of the repository at ``remote`` checked against its signatures (see the module)."""
    policy = cache.trust_policy()
    if policy is not None:

        async def work(repo: Repository) -> SignatureReport:
            async with cache.locks.ahold("trust"):
                return await _report(repo, policy, cache.trusted)

        return run_with_repository(work, remote_url(remote))
    with tempfile.TemporaryDirectory(prefix="cas-signatures-") as scratch:
        return run_with_repository(lambda repo: _first_use(repo, TrustedState(scratch)), remote_url(remote))


async def _first_use(repo: Repository, scratch: TrustedState) -> SignatureReport:
    try:
        root = await repo.document(trust_root_key(1), MAX_BYTES["root"])
    except NotFound:
        versions = await repo.versions()
        return SignatureReport("nothing: the repository has no signatures",
                               [Finding(i.tag, "", (), "unsigned") for i in versions], [])  # fmt: skip
    where = "the repository's own root (trusted on first use: set CAS_TRUST to check against yours)"
    return await _report(repo, TrustPolicy((Anchor(repo.url, root),), where), scratch)


async def _report(repo: Repository, policy: TrustPolicy, trusted: TrustedState) -> SignatureReport:
    versions = await repo.versions()
    findings = [await _finding(repo, policy, trusted, info) for info in versions]
    newest: dict[str, ModelInfo] = {}
    for info in versions:  # newest first
        newest.setdefault(info.name, info)
    latest = []
    for name, info in sorted(newest.items()):
        try:
            signed = (await verify(repo, policy, trusted, Tag(name, "latest"))).tag.version
        except Untrusted:
            signed = None
        if signed != info.version:
            latest.append(f"{name}: the listing's newest is {info.version}, its signed latest is {signed or 'none'}")
    return SignatureReport(policy.where, findings, latest)


async def _finding(repo: Repository, policy: TrustPolicy, trusted: TrustedState, info: ModelInfo) -> Finding:
    try:
        verdict = await verify(repo, policy, trusted, Tag(info.name, info.version))
    except Untrusted as e:
        return Finding(info.tag, "", (), str(e))
    if verdict.verified.root != info.root:
        return Finding(info.tag, "", (), f"its ref names tree {info.root[:16]}, its signature "
                                         f"{verdict.verified.root[:16]}")  # fmt: skip
    return Finding(info.tag, verdict.verified.role, verdict.verified.keys, "")
