"""Checking a repository: what `cas verify --remote URL` reports.

Every ref must name a tree that exists and hashes to its name, with a
locator that places every chunk of the tree inside a pack that exists and
has an index, and every index its pack.  A pack without an index is what an
interrupted push leaves (packs go up before their indexes): an orphan, not
damage.  The
deep check also reads each pack (streamed in windows: memory is one
window) and proves its name, its size and every chunk in it.  Nothing is repaired:
a repository is shared, and what is wrong with it is for its owner to fix
(re-pushing the model restores whatever a ref lacks).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from . import codec
from .digest import file_hasher
from .errors import CasError, NotFound
from .repo.backend import Backend
from .repo.format import decode_index, decode_locator, locator_key, pack_key, tree_key
from .sync import remote_url, remote_versions, run_with_backend
from .tree import decode as decode_tree

WINDOW = 16 << 20  # bytes of a pack read at a time by the deep check


class RepoReport(NamedTuple):
    refs: int
    packs: int
    problems: list[str]  # a ref could not be pulled whole, or stored bytes are not what their name says
    orphans: list[str]  # left by an interrupted push: harmless, no ref needs them

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(remote: str | None = None, *, deep: bool = False) -> RepoReport:
    """Check the repository at ``remote`` (else ``$CAS_REMOTE``); ``deep`` re-reads every pack."""
    return run_with_backend(lambda backend: _check(backend, deep), remote_url(remote))


async def _check(backend: Backend, deep: bool) -> RepoReport:
    problems: list[str] = []
    keys = await backend.list("packs/")
    names = {k[len("packs/") :] for k in keys}
    packs = {n for n in names if "." not in n}
    indexes: dict[str, int] = {}  # pack id: size its index declares
    for name in sorted(names - packs):
        pack_id = name.removesuffix(".idx")
        if pack_id not in packs:
            problems.append(f"packs/{name}: an index without its pack")
            continue
        try:
            size, entries = decode_index(await backend.get(f"packs/{name}"))
        except CasError as e:
            problems.append(f"packs/{name}: {e}")
            continue
        indexes[pack_id] = size
        if deep:
            problems += await _check_pack(backend, pack_id, size, entries)
    orphans = [f"packs/{p}: a pack without an index" for p in sorted(packs) if f"{p}.idx" not in names]
    versions = await remote_versions(backend)
    for info in versions:
        try:
            tree = decode_tree(await backend.get(tree_key(info.root)), bytes.fromhex(info.root))
            locations = decode_locator(await backend.get(locator_key(info.root)))
        except (CasError, NotFound) as e:
            problems.append(f"{info.tag}: {e}")
            continue
        for f in tree.files:
            for cid, _ in f.chunk_list():
                loc = locations.get(cid)
                if loc is None:
                    problems.append(f"{info.tag}: {f.path}: chunk {cid.hex()} has no location")
                elif loc.pack_id not in indexes:
                    problems.append(f"{info.tag}: {f.path}: chunk {cid.hex()} is in a missing pack {loc.pack_id}")
                elif loc.offset + loc.length > indexes[loc.pack_id]:
                    problems.append(f"{info.tag}: {f.path}: chunk {cid.hex()} lies past the end of its pack")
    return RepoReport(len(versions), len(indexes), problems, orphans)


async def _check_pack(backend: Backend, pack_id: str, size: int, entries: list) -> list[str]:
    """Stream a pack in windows: prove its name and every chunk in it, holding one window (and a chunk) at a time."""
    key = pack_key(pack_id)
    hasher = file_hasher(threads=False)
    todo = deque(sorted(entries, key=lambda e: e.offset))
    problems: list[str] = []
    held, held_from = b"", 0  # the bytes from held_from to the current window: the next chunks' beginnings
    for start in range(0, size, WINDOW):
        try:
            data = await backend.get_range(key, start, min(size, start + WINDOW))
        except CasError as e:
            return [*problems, f"{key}: {e}"]
        hasher.update(data)
        held += data
        view = memoryview(held)
        while todo and todo[0].offset + todo[0].length <= start + len(data):
            e = todo.popleft()
            try:
                codec.decode(view[e.offset - held_from : e.offset - held_from + e.length], e.raw_length, e.chunk_id)
            except CasError as err:
                problems.append(f"{key}: {err}")
        del view
        keep_from = todo[0].offset if todo else start + len(data)
        held, held_from = held[keep_from - held_from :], keep_from
    if todo:
        problems.append(f"{key}: chunk {todo[0].chunk_id.hex()} lies past the {size} bytes its index declares")
    if hasher.digest().hex() != pack_id:
        problems.append(f"{key}: its bytes do not hash to its name")
    return problems
