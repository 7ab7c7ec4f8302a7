"""The signed documents an export file carries, so a host with a policy verifies an import as it would a pull.

An exporting host that verified the model (``cas.local.trusted``) writes
the documents it verified it with: every root version it accepted, the
state, and each role document that state names.  They are keyed as in a
repository (``trust/root/<n>``, ``trust/state``, ``trust/roles/<role>/<n>``),
so the importing host runs the same check (``cas.trust.client.verify``)
on them as on a repository: the same rollback, expiry and key rules, and
nothing decided by the file that its signatures do not say.  A file from
a host without signatures carries none, and a host with a policy refuses it.
"""

from __future__ import annotations

import blake3
import msgpack

from ..errors import InvalidManifest, NotFound, Untrusted
from ..repo.format import check_key, trust_role_key, trust_root_key, trust_state_key
from .documents import MAX_BYTES, MAX_ROOT_CHAIN, decode_state, open_envelope

MAX_DOCUMENTS = MAX_ROOT_CHAIN + 1000  # every root version, the state and one document per role
MAX_BUNDLE_BYTES = 64 << 20


def gather(held: dict[str, bytes]) -> dict[str, bytes]:
    """The repository keys of the documents a host holds (``TrustedState.held_for``); a role document the
    state no longer names (a newer one exists that this host has not needed) is left out."""
    state = held.get("state")
    if state is None:
        return {}
    where = "this host's trusted state"
    roles = decode_state(open_envelope(state, "state", where).payload, where).roles
    docs = {trust_state_key(): state}
    for name, data in held.items():
        kind, _, rest = name.partition("/")
        if kind == "roots" and rest.isdigit():
            docs[trust_root_key(int(rest))] = data
        elif kind == "roles" and rest in roles and blake3.blake3(data).hexdigest() == roles[rest].digest:
            docs[trust_role_key(rest, roles[rest].version)] = data
    return docs


def encode(docs: dict[str, bytes]) -> bytes:
    return msgpack.packb(dict(sorted(docs.items())), use_bin_type=True) if docs else b""


def decode(data: bytes, where: str) -> dict[str, bytes]:
    """The documents of an export file's trust record, each key one a repository could hold (shape only:
    their signatures are checked by ``verify``)."""
    if not data:
        return {}
    try:
        docs = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=MAX_DOCUMENTS,
                               max_bin_len=max(MAX_BYTES.values()))  # fmt: skip
        if not isinstance(docs, dict) or not all(isinstance(v, bytes) for v in docs.values()):
            raise ValueError("not a map of documents")
        if not all(isinstance(k, str) and check_key(k)[0].startswith("trust-") for k in docs):
            raise ValueError("a key that is not a trust document's")
    except (ValueError, TypeError, InvalidManifest, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Untrusted(f"{where}: its signatures record is not cas's ({str(e)[:200]}); nothing was stored") from None
    return docs


class Bundle:
    """An export file's documents, read as ``verify`` reads a repository's."""

    def __init__(self, docs: dict[str, bytes], url: str):
        self.docs, self._url = docs, url

    @property
    def url(self) -> str:
        return self._url

    async def document(self, key: str, limit: int) -> bytes:
        if not self.docs:
            raise Untrusted(f"{self._url} carries no signatures, and the trust policy asks for them; nothing "
                            "was stored (export it from a host that verified it, or pull it from a signed "
                            "repository)")  # fmt: skip
        data = self.docs.get(key)
        if data is None:
            raise NotFound(f"{key} is not in {self._url}")
        if len(data) > limit:
            raise Untrusted(f"{self._url}: {key} has {len(data)} bytes, more than the {limit} allowed")
        return data
