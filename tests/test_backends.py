"""One backend contract, tested once for every backend (as restic runs one suite against each of its own).

The same cases run against a folder (``file://``), ``cas serve``, nginx
serving a folder (the read cases: a static server takes no writes) and an
S3-compatible server (moto), each a real server on 127.0.0.1; faults and
hostile answers come from ``tests/faultproxy.py`` in front of the servers.
The contract is the one ``cas/repo/backend.py`` states.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import NamedTuple

import pytest

from cas import ModelInfo, NotFound, RepoError
from cas.content.digest import chunk_id
from cas.content.tree import FileEntry, Tree, pack_chunks, root_of
from cas.repo import listing, ocilayout
from cas.repo.backend import WriteBackend
from cas.repo.file import FileBackend
from cas.repo.format import encode_locator, locator_key, tree_key
from cas.repo.registry import Registry
from cas.repo.stores import open_backend

from .conftest import TOKEN

KINDS = ("file", "cas serve", "nginx", "s3", "oci")
WRITABLE = ("file", "cas serve", "s3", "oci")
NETWORKED = ("cas serve", "nginx", "s3", "oci")
EMPTY = Tree.build([FileEntry("empty.txt", 0, False, chunk_id(b""), pack_chunks([]))])
ROOT = root_of(EMPTY.encode())


def ref(writer: int) -> bytes:
    """A ref every server accepts (cas serve checks refs), different for each writer."""
    return ModelInfo("m", "v1", ROOT, float(writer), 0, 1, {"writer": str(writer)}).encode()


PACK = "packs/" + "ab" * 32
PACK_BYTES = bytes(range(256)) * 40  # 10,240 bytes


class Store(NamedTuple):
    """A repository to test: its URL, and how to put an object there directly."""

    kind: str
    url: str
    seed: Callable[[str, bytes], None]
    upstream: str  # what a fault proxy stands in front of: the HTTP server, or the S3 endpoint

    def open(self, url: str | None = None) -> WriteBackend:
        return open_backend(url or self.url, token=TOKEN)


def kinds(*names: str):
    """Run a test against these kinds of store."""
    return pytest.mark.parametrize("store", names, indirect=True)


@pytest.fixture
def store(request, tmp_path) -> Store:
    kind = request.param
    folder = tmp_path / "repo"

    def seed_folder(key: str, data: bytes) -> None:
        asyncio.run(FileBackend(folder).create(key, data))

    if kind == "file":
        return Store(kind, f"file://{folder}", seed_folder, "")
    if kind == "nginx":
        folder.mkdir()
        url = request.getfixturevalue("nginx")(folder)
        return Store(kind, url, seed_folder, url)
    if kind == "cas serve":
        url, folder = request.getfixturevalue("server")
        return Store(kind, url, seed_folder, url)
    if kind == "oci":
        base, _ = request.getfixturevalue("registry")()
        url = f"oci://{base.removeprefix('http://')}/team"
        return Store(kind, url, lambda k, d: asyncio.run(_seed_registry(url, k, d)), base)
    url = request.getfixturevalue("s3")
    return Store(kind, url, lambda k, d: asyncio.run(_create(url, k, d)), os.environ["AWS_ENDPOINT_URL"])


async def _seed_registry(url: str, key: str, data: bytes) -> None:
    """Put ``data`` under ``key`` in a registry as cas lays it out; a ref as it is, even one no push would make."""
    if not key.startswith("refs/"):
        await _create(url, key, data)
        return
    where = ocilayout.parse_url(url)
    repo = ocilayout.place(where.namespace, key)
    client = Registry(where.base)
    try:
        config = await client.put_blob(repo.repository, data)
        await client.put_manifest(repo.repository, repo.tag, ocilayout.version_manifest(key, config, ROOT, 0.0, []))
    finally:
        await client.close()


async def _create(url: str, key: str, data: bytes) -> bool:
    backend = open_backend(url, token=TOKEN)
    try:
        return await backend.create(key, data)
    finally:
        await backend.close()


def run(store: Store, work: Callable, url: str | None = None):
    """Run ``work(backend)`` on a fresh backend, closed afterwards."""

    async def main():
        backend = store.open(url)
        try:
            return await work(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def with_tree(store: Store) -> None:
    """The tree and locator a ref of ``ref()`` names: refs come last."""
    store.seed(tree_key(ROOT), EMPTY.encode())
    store.seed(locator_key(ROOT), encode_locator({}))


# -- reads ---------------------------------------------------------------------------------------


@kinds(*KINDS)
def test_get_returns_the_object_and_ranges_end_exactly_at_the_pack_end(store):
    store.seed(PACK, PACK_BYTES)
    assert run(store, lambda b: b.get(PACK)) == PACK_BYTES
    assert run(store, lambda b: b.get_range(PACK, 10_230, 10_240)) == PACK_BYTES[-10:]
    assert run(store, lambda b: b.get_range(PACK, 0, 10_240)) == PACK_BYTES
    assert run(store, lambda b: b.get_range(PACK, 100, 101)) == PACK_BYTES[100:101]
    with pytest.raises(RepoError):
        run(store, lambda b: b.get_range(PACK, 10_230, 10_250))  # past the end: never a short answer


@kinds(*KINDS)
def test_a_missing_key_is_not_found_naming_the_repository(store):
    store.seed(PACK, PACK_BYTES)
    for read in (lambda b: b.get("trees/" + "cd" * 32), lambda b: b.get_range("packs/" + "ef" * 32, 0, 10)):
        with pytest.raises(NotFound, match="is not in the repository"):
            run(store, read)


@kinds(*KINDS)
def test_listing_with_and_without_a_prefix_or_one_clear_refusal(store):
    for key in ("refs/a/v1", "refs/a/v2", "refs/b/v1", PACK):
        store.seed(key, b"x")
    if store.kind == "nginx":  # a static server lists nothing; readers use index/ documents instead
        with pytest.raises(RepoError, match="cannot list refs/ \\(a static web server lists nothing\\)"):
            run(store, lambda b: b.list("refs/"))
        return
    assert run(store, lambda b: b.list("refs/")) == ["refs/a/v1", "refs/a/v2", "refs/b/v1"]
    assert run(store, lambda b: b.list("refs/a/")) == ["refs/a/v1", "refs/a/v2"]
    assert run(store, lambda b: b.list("packs/")) == [PACK]
    assert run(store, lambda b: b.list("trees/")) == []


# -- writes ----------------------------------------------------------------------------------------


@kinds(*WRITABLE)
def test_create_stores_once_and_never_overwrites(store):
    with_tree(store)
    assert run(store, lambda b: b.create("refs/m/v1", ref(1))) is True
    assert run(store, lambda b: b.create("refs/m/v1", ref(2))) is False
    assert run(store, lambda b: b.get("refs/m/v1")) == ref(1)


@kinds(*WRITABLE)
def test_of_racing_creators_exactly_one_wins(store):
    with_tree(store)

    async def race(_):
        async def one(i: int) -> bool:
            backend = store.open()
            try:
                return await backend.create("refs/m/v1", ref(i))
            finally:
                await backend.close()

        return await asyncio.gather(*(one(i) for i in range(8)))

    won = run(store, race)
    assert won.count(True) == 1
    assert run(store, lambda b: b.get("refs/m/v1")) == ref(won.index(True))


@kinds(*WRITABLE)
def test_racing_listing_updates_lose_nothing(store):

    async def race(_):
        async def one(i: int) -> None:
            backend = store.open()
            try:
                await backend.update(listing.versions_key("m"), lambda d: listing.with_version(d, f"v{i}", float(i)))
            finally:
                await backend.close()

        await asyncio.gather(*(one(i) for i in range(8)))

    run(store, race)
    versions = listing.decode_versions(run(store, lambda b: b.get(listing.versions_key("m"))))
    assert versions.keys() == {f"v{i}" for i in range(8)}
    # each listed at its creation time, or after what was listed before it: the repository's order of commits
    assert all(t >= float(v[1:]) for v, t in versions.items()) and len(set(versions.values())) == 8


@kinds(*WRITABLE)
def test_an_update_with_nothing_to_change_writes_nothing(store):
    run(store, lambda b: b.update(listing.names_key(), lambda d: listing.with_name(d, "m")))
    calls = []

    def unchanged(data: bytes | None) -> bytes | None:
        calls.append(data)
        return None

    run(store, lambda b: b.update(listing.names_key(), unchanged))
    assert calls == [listing.encode_names(["m"])]


@kinds("nginx")
def test_a_static_server_refuses_writes_in_one_line_that_says_what_to_do(store):
    with pytest.raises(RepoError, match="does not accept uploads .* push to a cas serve, file:// or s3:// "):
        run(store, lambda b: b.create(tree_key(ROOT), EMPTY.encode()))


@kinds(*WRITABLE)
def test_delete_removes_a_key_and_a_missing_key_is_fine(store):
    store.seed(PACK, PACK_BYTES)
    store.seed(PACK + ".idx", b"index")
    run(store, lambda b: b.delete(PACK))
    with pytest.raises(NotFound):
        run(store, lambda b: b.get(PACK))
    assert run(store, lambda b: b.list("packs/")) == [PACK + ".idx"]
    run(store, lambda b: b.delete(PACK))  # gone already: a prune killed midway deletes again
    run(store, lambda b: b.delete("trees/" + "cd" * 32))  # never there


@kinds("nginx")
def test_a_static_server_refuses_removal_in_one_line_that_says_what_to_do(store):
    store.seed(PACK, PACK_BYTES)
    with pytest.raises(RepoError, match="removal needs a writable repository and the token") as e:
        run(store, lambda b: b.delete(PACK))
    assert "\n" not in str(e.value)
    assert run(store, lambda b: b.get(PACK)) == PACK_BYTES


@kinds("cas serve")
def test_cas_serve_deletes_only_with_the_token_and_only_keys_of_the_layout(store):
    store.seed(PACK, PACK_BYTES)
    store.seed(listing.names_key(), listing.encode_names(["m"]))

    def delete(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"{store.url}/{path}", method="DELETE", headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    assert delete(PACK, None) == 401 and delete(PACK, "wrong") == 403
    assert delete("../token", TOKEN) == 404 and delete("packs/notahash", TOKEN) == 404
    assert delete(listing.names_key(), TOKEN) == 400  # listings are updated, never deleted
    assert run(store, lambda b: b.get(PACK)) == PACK_BYTES
    assert delete(PACK, TOKEN) == 204 and delete(PACK, TOKEN) == 204
    with pytest.raises(NotFound):
        run(store, lambda b: b.get(PACK))


# -- faults and hostile answers, through the fault proxy --------------------------------------------


def proxied(store: Store, proxy, monkeypatch, fault: str, every: int = 1) -> str:
    """The store's URL with a fault proxy in front of its server."""
    front = proxy(store.upstream, fault, every)
    if store.kind == "oci":
        return f"oci://{front.removeprefix('http://')}/team"
    if store.kind == "s3":
        monkeypatch.setenv("AWS_ENDPOINT_URL", front)
        return store.url
    return front


@kinds(*NETWORKED)
def test_transient_faults_are_retried(store, proxy, monkeypatch):
    store.seed(PACK, PACK_BYTES)
    for fault in ("500", "drop", "truncate"):
        url = proxied(store, proxy, monkeypatch, fault, every=2)
        assert run(store, lambda b: b.get_range(PACK, 0, 10_240), url) == PACK_BYTES, fault


@kinds(*NETWORKED)
def test_permanent_faults_end_in_one_line_naming_the_repository(store, proxy, monkeypatch):
    monkeypatch.setenv("CAS_STALL_TIMEOUT", "1")
    store.seed(PACK, PACK_BYTES)
    url = proxied(store, proxy, monkeypatch, "500")
    with pytest.raises(RepoError) as e:
        run(store, lambda b: b.get_range(PACK, 0, 100), url)
    message = str(e.value)
    hosts = {u.split("//")[1].split("/")[0] for u in (store.url, url)}
    assert "\n" not in message and any(h in message for h in hosts)


@kinds(*NETWORKED)
def test_hostile_answers_are_bounded(store, proxy, monkeypatch):
    store.seed(PACK, PACK_BYTES)
    store.seed("trees/" + "cd" * 32, b"small")
    url = proxied(store, proxy, monkeypatch, "norange")  # the whole pack for every range: only the window is kept
    assert run(store, lambda b: b.get_range(PACK, 5_000, 5_010), url) == PACK_BYTES[5_000:5_010]
    url = proxied(store, proxy, monkeypatch, "bloat")  # 2 GB where a tree should be
    with pytest.raises(RepoError, match="more than the"):
        run(store, lambda b: b.get("trees/" + "cd" * 32), url)
