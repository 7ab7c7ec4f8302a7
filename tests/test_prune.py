"""Removing models from a repository (``rm --remote``) and pruning what no ref reaches, on every store that deletes.

Each case runs against a folder (``file://``), ``cas serve`` with its token and an S3 server (moto), each real;
what is present or absent is read back from the store itself.  Two versions share most chunks: ``m:v1`` packs
everything in one pack, ``m:v2`` (30% of its tensors changed) adds a second pack of its new chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import urllib.request
from pathlib import Path
from typing import NamedTuple

import msgpack
import pytest

import cas
from cas import Cache, InvalidInput, InvalidManifest, NotFound, RepoError
from cas.repo import listing, marks
from cas.repo.format import decode_locator, locator_key, marks_key, pack_key, tree_key
from cas.repo.repository import Repository
from cas.repo.stores import open_backend
from cas.sync.prune import parse_duration
from tests.support import synth

from .conftest import TOKEN, cas_cli, tree_files

STORES = ("file", "cas serve", "s3")
DAY = 86_400.0


class Pushed(NamedTuple):
    url: str
    cache: Cache  # holds m:v1 and m:v2
    models: dict[str, Path]  # tag -> the directory added
    roots: dict[str, str]  # tag -> root
    packs: dict[str, str]  # tag -> the pack its push wrote


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("prune-models")
    base = synth.model_tensors(7, 8 << 20, layer_bytes=1 << 20)
    return {"m:v1": synth.write_model_dir(d / "v1", base),
            "m:v2": synth.write_model_dir(d / "v2", synth.fine_tune(base, 0.3, seed=8))}  # fmt: skip


@pytest.fixture(params=STORES)
def url(request, tmp_path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'repo'}"
    if request.param == "cas serve":
        request.getfixturevalue("token")
        return request.getfixturevalue("server")[0]
    return request.getfixturevalue("s3")


@pytest.fixture
def pushed(url: str, models: dict[str, Path], tmp_path: Path) -> Pushed:
    cache = Cache(tmp_path / "src", durable=False)
    roots, packs = {}, {}
    for tag, path in models.items():
        before = stored_packs(url)
        roots[tag] = cache.add(path, tag).root
        cache.push(tag, url)
        (packs[tag],) = stored_packs(url) - before
    return Pushed(url, cache, models, roots, packs)


def on_store(url: str, work):
    async def main():
        backend = open_backend(url, token=TOKEN, creating=True)  # before the first push: no folder yet
        try:
            return await work(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def stored(url: str) -> dict[str, bytes]:
    """Every object of the repository with its bytes, read from the store itself (the marks included)."""

    async def read(backend):
        keys = [k for p in ("refs/", "trees/", "locators/", "packs/", "index/") for k in await backend.list(p)]
        out = {k: await backend.get(k) for k in keys}
        try:
            out[marks_key()] = await backend.get(marks_key())
        except NotFound:
            pass
        return out

    return on_store(url, read)


def stored_packs(url: str) -> set[str]:
    return {k[len("packs/") :] for k in stored(url) if k.startswith("packs/") and not k.endswith(".idx")}


def objects(url: str) -> set[str]:
    return {k for k in stored(url) if k != marks_key()}


def pulled(url: str, tag: str, home: Path) -> dict[str, bytes]:
    cache = Cache(home, durable=False)
    cache.pull(tag, url)
    return tree_files(cache.materialize(cache.get(tag).tag))


def killed_after_committing_deletion_of_v2(p: Pushed) -> None:
    """m:v2 removed, then what a prune killed right after committing its deletions leaves (its marks)."""
    cas.remove_remote(["m:v2"], p.url)
    cas.prune_remote(p.url, max_unused=1.0)

    async def commit_only(backend):
        await backend.update(marks_key(), lambda d: marks.encode(marks.Marks({}, marks.decode(d).marked, {})))

    on_store(p.url, commit_only)


def version_objects(p: Pushed, tag: str) -> set[str]:
    pack = p.packs[tag]
    return {tree_key(p.roots[tag]), locator_key(p.roots[tag]), pack_key(pack), f"packs/{pack}.idx"}


def test_durations():
    assert [parse_duration(t) for t in ("0", "45s", "30m", "12h", "1d", "2w")] == [0, 45, 1800, 43_200, DAY,
                                                                                    14 * DAY]  # fmt: skip
    for bad in ("", "12", "1y", "-1d", "d"):
        with pytest.raises(InvalidInput, match="expected a number and a unit"):
            parse_duration(bad)


def test_the_marks_document_round_trips_and_refuses_what_a_prune_never_writes():
    tree, pack = tree_key("ab" * 32), pack_key("cd" * 32)
    doc = marks.Marks({tree: 1.5}, {pack: 2.0}, {"ef" * 32: 3.0})
    assert marks.decode(marks.encode(doc)) == doc and marks.decode(None) == marks.EMPTY
    assert marks.reserved(marks.encode(doc), {pack}) is None  # not marked: nothing to write
    assert marks.decode(marks.reserved(marks.encode(doc), {tree})).marked == {}
    hostile = [b"\xc1", msgpack.packb([1, [["refs/m/v1", 1.0]], [], []]), msgpack.packb([1, [[tree, -1.0]], [], []]),
               msgpack.packb([1, [[tree, 1.0], [pack, 1.0]], [], []]), msgpack.packb([1, [], [], [["../x", 1.0]]]),
               msgpack.packb([2, [], [], []])]  # fmt: skip
    for data in hostile:
        with pytest.raises(InvalidManifest):
            marks.decode(data)


def test_rm_remote_removes_refs_and_moves_latest_and_listings(pushed, tmp_path):
    p = pushed
    before = objects(p.url)
    out = cas_cli("rm", "--remote", p.url, "m:latest", home=tmp_path / "cli")
    assert out.stdout.splitlines() == ["removed m:v2"]
    assert [i.tag for i in cas.list_remote(p.url)] == ["m:v1"]
    assert objects(p.url) == before - {"refs/m/v2"}  # the data waits for prune
    assert listing.decode_versions(stored(p.url)[listing.versions_key("m")]).keys() == {"v1"}
    assert pulled(p.url, "m:latest", tmp_path / "h") == tree_files(p.models["m:v1"])  # latest moved to v1
    with pytest.raises(NotFound, match="m:v2 is not in the repository"):
        cas.remove_remote(["m:v2"], p.url)
    assert [i.tag for i in cas.remove_remote(["m"], p.url)] == ["m:v1"]
    assert cas.list_remote(p.url) == []
    assert listing.decode_names(stored(p.url)[listing.names_key()]) == []


def test_prune_marks_then_deletes_exactly_what_no_ref_reaches(pushed, tmp_path):
    p = pushed
    cas.remove_remote(["m:v2"], p.url)
    before = objects(p.url)
    first = cas.prune_remote(p.url, max_unused=1.0)  # the default grace: a day
    assert objects(p.url) == before  # marked only: everything is still there
    dead = version_objects(p, "m:v2")
    pack_bytes = len(stored(p.url)[pack_key(p.packs["m:v2"])])
    assert first.marked == (3, pack_bytes) and first.deleted == (0, 0)  # tree, locator, pack (with its index)
    assert set(marks.decode(stored(p.url)[marks_key()]).marked) == {k for k in dead if not k.endswith(".idx")}
    assert cas.prune_remote(p.url, max_unused=1.0).deleted.count == 0  # still within the grace period

    out = cas_cli("prune", "--remote", p.url, "--grace", "0", "--max-unused", "100", "--json", home=tmp_path / "c")
    report = json.loads(out.stdout)
    assert report["deleted"] == {"count": 3, "bytes": first.marked.bytes} and report["marked"]["count"] == 0
    assert objects(p.url) == before - dead
    assert marks.decode(stored(p.url)[marks_key()]) == marks.EMPTY  # nothing left marked, deleting or removed
    assert pulled(p.url, "m:v1", tmp_path / "h") == tree_files(p.models["m:v1"])
    check = cas.check_repository(p.url, deep=True)
    assert check.ok and check.orphans == [], check


def test_repack_copies_live_chunks_and_rewrites_locators(pushed, tmp_path):
    p = pushed
    cas.remove_remote(["m:v1"], p.url)  # v1's pack is now partly dead: v2 uses about 70% of it
    old_locator = decode_locator(stored(p.url)[locator_key(p.roots["m:v2"])])
    report = cas.prune_remote(p.url)  # max_unused 10%
    assert report.repacked.count == 1 and 0 < report.repacked.bytes
    new_locator = decode_locator(stored(p.url)[locator_key(p.roots["m:v2"])])
    assert old_locator.keys() == new_locator.keys()
    assert p.packs["m:v1"] not in {loc.pack_id for loc in new_locator.values()}
    assert pack_key(p.packs["m:v1"]) in objects(p.url)  # a pull holding the old locator still finds it
    assert pulled(p.url, "m:v2", tmp_path / "h1") == tree_files(p.models["m:v2"])

    assert cas.prune_remote(p.url, grace=0).deleted.count == 3
    assert objects(p.url).isdisjoint(version_objects(p, "m:v1"))
    assert stored_packs(p.url) == {loc.pack_id for loc in new_locator.values()}
    assert pulled(p.url, "m:v2", tmp_path / "h2") == tree_files(p.models["m:v2"])
    check = cas.check_repository(p.url, deep=True)
    assert check.ok and check.orphans == [], check


def test_dry_run_changes_nothing(pushed, tmp_path):
    p = pushed
    cas.remove_remote(["m:v1"], p.url)
    cas.prune_remote(p.url, max_unused=1.0)  # marks v1's tree and locator
    before = stored(p.url)
    out = cas_cli("prune", "--remote", p.url, "--grace", "0", "--dry-run", home=tmp_path / "c").stdout
    assert "would be deleted" in out and "dry run: nothing was changed" in out
    report = cas.prune_remote(p.url, grace=0, dry_run=True)
    assert report.dry_run and report.deleted.count == 2 and report.repacked.count == 1
    assert stored(p.url) == before  # byte for byte, the marks included


def test_a_push_in_progress_survives_prune_with_the_default_grace(pushed, tmp_path, models):
    """Packs, tree and locator written, no ref yet: marked, never deleted within the grace period; the ref, once
    written, reaches them again and the next prune unmarks them."""
    p = pushed
    cas.remove_remote(["m:v2"], p.url)
    cas.prune_remote(p.url, grace=0, max_unused=1.0)
    cas.prune_remote(p.url, grace=0, max_unused=1.0)
    assert objects(p.url).isdisjoint(version_objects(p, "m:v2"))
    info = p.cache.get("m:v2")
    scratch = f"file://{tmp_path / 'scratch'}"
    p.cache.push("m:v2", scratch)  # the same push's objects, copied over without the ref: a push stopped before it
    for key, data in sorted(stored(scratch).items(), key=lambda kv: kv[0].startswith("locators/")):
        if key.startswith(("trees/", "locators/", "packs/")):  # cas serve takes a locator after its tree and packs
            on_store(p.url, lambda b, k=key, d=data: b.create(k, d))
    in_progress = objects(p.url)
    for _ in range(2):
        report = cas.prune_remote(p.url, max_unused=1.0)
        assert report.deleted.count == 0 and report.marked.count == 3
    assert objects(p.url) == in_progress

    async def finish(backend):
        await Repository(backend).put_ref(info)

    on_store(p.url, finish)
    assert cas.prune_remote(p.url, grace=0, max_unused=1.0).deleted.count == 0
    assert marks.decode(stored(p.url)[marks_key()]).marked == {}
    assert pulled(p.url, "m:v2", tmp_path / "h") == tree_files(models["m:v2"])
    assert cas.check_repository(p.url, deep=True).ok


def test_a_push_reusing_marked_objects_takes_them_out_of_the_marks(pushed, tmp_path, models):
    p = pushed
    cas.remove_remote(["m:v2"], p.url)
    cas.prune_remote(p.url, max_unused=1.0)
    assert len(marks.decode(stored(p.url)[marks_key()]).marked) == 3
    stats = p.cache.push("m:v2", p.url)  # the same content again: its tree, locator and pack are there
    assert stats.bytes_uploaded == 0
    assert marks.decode(stored(p.url)[marks_key()]).marked == {}
    assert cas.prune_remote(p.url, grace=0, max_unused=1.0).deleted.count == 0
    assert pulled(p.url, "m:v2", tmp_path / "h") == tree_files(models["m:v2"])


def test_a_push_reuses_nothing_a_prune_is_deleting(pushed, tmp_path, models):
    """A prune killed after committing deletions: a push uploads again what it would have reused; its own tree
    being deleted stops it with a clear error; the next prune finishes."""
    p = pushed
    killed_after_committing_deletion_of_v2(p)
    with pytest.raises(RepoError, match="a prune of .* is deleting .*, which this push needs; push again"):
        p.cache.push("m:v2", p.url)
    assert cas.prune_remote(p.url, grace=DAY, max_unused=1.0).deleted.count == 3  # finished whatever the grace
    stats = p.cache.push("m:v2", p.url)
    assert stats.bytes_uploaded > 0
    assert pulled(p.url, "m:v2", tmp_path / "h") == tree_files(models["m:v2"])
    assert cas.check_repository(p.url, deep=True).ok


def test_a_push_that_listed_a_pack_before_a_prune_deleted_it_does_not_reuse_it(pushed):
    """What a push that listed the packs, then lost the race to a deleting prune, learns when it reserves."""
    p = pushed
    cas.remove_remote(["m:v2"], p.url)
    cas.prune_remote(p.url, max_unused=1.0)
    cas.prune_remote(p.url, grace=0, max_unused=1.0)
    v1, v2 = pack_key(p.packs["m:v1"]), pack_key(p.packs["m:v2"])
    assert on_store(p.url, lambda b: Repository(b).reserve({v1, v2})) == {v2}


def test_a_read_only_server_refuses_rm_and_prune_in_one_line(models, nginx, tmp_path):
    folder = tmp_path / "repo"
    Cache(tmp_path / "src").add(models["m:v1"], "m:v1")
    Cache(tmp_path / "src").push("m:v1", f"file://{folder}")
    before = stored(f"file://{folder}")
    front = nginx(folder)
    for args, said in (
        (["rm", "--remote", front, "m:v1"], "removal needs a writable repository and the token"),
        (["prune", "--remote", front], "prune needs a repository it can list and delete in"),
    ):
        err = cas_cli(*args, home=tmp_path / "c", check=False).stderr
        assert err.count("\n") == 1 and err.startswith("cas: error: ") and said in err, err
    assert stored(f"file://{folder}") == before


def test_cas_serve_without_the_token_refuses_removal(server, models, tmp_path, monkeypatch):
    url, _ = server
    monkeypatch.setenv("CAS_TOKEN", TOKEN)
    Cache(tmp_path / "src").add(models["m:v1"], "m:v1")
    Cache(tmp_path / "src").push("m:v1", url)
    env = {k: v for k, v in os.environ.items() if k != "CAS_TOKEN"}
    err = cas_cli("rm", "--remote", url, "m:v1", home=tmp_path / "c", env=env, check=False).stderr
    assert "set CAS_TOKEN to the server's token" in err and TOKEN not in err
    err = cas_cli("rm", "--remote", url, "m:v1", home=tmp_path / "c", env={**env, "CAS_TOKEN": "wrong"},
                  check=False).stderr  # fmt: skip
    assert "check CAS_TOKEN" in err and "wrong" not in err
    assert [i.tag for i in cas.list_remote(url)] == ["m:v1"]


def test_forged_marks_never_delete_what_a_ref_reaches(pushed, tmp_path, models):
    """Anyone who can write the repository can write its marks: committing every live object to deletion
    must delete none of them (the refs are read again right before deleting)."""
    p = pushed
    live = version_objects(p, "m:v1") | version_objects(p, "m:v2")
    forged = {k: 1.0 for k in live if not k.endswith(".idx")}

    async def forge(backend):
        await backend.update(marks_key(), lambda d: marks.encode(marks.Marks({}, forged, {})))

    on_store(p.url, forge)
    report = cas.prune_remote(p.url)
    assert report.deleted.count == 0
    assert live <= objects(p.url)
    assert marks.decode(stored(p.url)[marks_key()]).deleting == {}  # taken out of the marks: they are live
    assert cas.check_repository(p.url, deep=True).ok
    assert pulled(p.url, "m:v1", tmp_path / "h") == tree_files(models["m:v1"])


def test_a_new_version_never_reuses_a_pack_a_prune_is_deleting(pushed, tmp_path, models):
    """Another version sharing the chunks of a removed one, pushed after a prune committed to deleting that
    version's pack (and was killed): the push uploads those chunks again, so once the prune finishes, the new
    version still pulls byte for byte and the repository checks clean."""
    p = pushed
    killed_after_committing_deletion_of_v2(p)
    like_v2 = tmp_path / "v3"
    shutil.copytree(models["m:v2"], like_v2)
    (like_v2 / "notes.txt").write_text("v2's weights under another version\n")
    p.cache.add(like_v2, "m:v3")
    stats = p.cache.push("m:v3", p.url)
    assert stats.bytes_uploaded > 0.2 * stats.info.size  # v2's changed tensors went up again
    assert cas.prune_remote(p.url, grace=DAY, max_unused=1.0).deleted.count > 0  # v2's objects go now
    assert pulled(p.url, "m:v3", tmp_path / "h") == tree_files(like_v2)
    assert cas.check_repository(p.url, deep=True).ok


def test_what_a_recently_removed_ref_reaches_is_marked_but_never_deleted_within_the_grace(pushed):
    """A pull that began before ``rm --remote`` reads the removed version's locator and packs: while the removal
    is younger than the grace period, a prune marks them but never commits to deleting them, however old
    their marks are."""
    p = pushed
    cas.remove_remote(["m:v2"], p.url)
    grace = 3600.0
    cas.prune_remote(p.url, grace=grace, max_unused=1.0)
    v2_only = {k for k in version_objects(p, "m:v2") - version_objects(p, "m:v1") if not k.endswith(".idx")}

    async def age_marks(backend):  # the marks made long ago; the removal stays recent
        def older(d):
            m = marks.decode(d)
            return marks.encode(marks.Marks({k: t - 2 * grace for k, t in m.marked.items()}, m.deleting, m.removed))

        await backend.update(marks_key(), older)

    on_store(p.url, age_marks)
    assert v2_only <= set(marks.decode(stored(p.url)[marks_key()]).marked)
    report = cas.prune_remote(p.url, grace=grace, max_unused=1.0)
    after = marks.decode(stored(p.url)[marks_key()])
    assert report.deleted.count == 0 and not v2_only & set(after.deleting)
    assert v2_only <= objects(p.url)


def test_a_ref_landing_while_forged_marks_are_being_deleted_keeps_what_it_reaches(server, token, proxy, models,
                                                                                  tmp_path):  # fmt: skip
    """Forged marks commit m:v3's tree, locator and pack to deletion while its push is one step from done; its ref
    lands after the prune surveyed the refs and before it deletes (a proxy runs the push's last step at that
    moment): the refs read again right before deleting keep all three, and m:v3 pulls."""
    url, folder = server
    cache = Cache(tmp_path / "src", durable=False)
    cache.add(models["m:v1"], "m:v1")
    cache.push("m:v1", url)
    before = stored_packs(url)
    root = cache.add(models["m:v2"], "m:v3").root
    cache.push("m:v3", url)
    (pack,) = stored_packs(url) - before
    ref = folder / "refs" / "m" / "v3"
    held = tmp_path / "v3.ref"
    ref.rename(held)  # the push's last step, not taken yet
    doomed = {tree_key(root), locator_key(root), pack_key(pack)}

    async def forge(backend):
        await backend.update(marks_key(), lambda d: marks.encode(marks.Marks({}, dict.fromkeys(doomed, 1.0), {})))

    on_store(url, forge)
    front = proxy(url, on_relist=f"cp {shlex.quote(str(held))} {shlex.quote(str(ref))}")
    report = cas.prune_remote(front, grace=DAY, max_unused=1.0)
    assert ref.is_file()  # the hook ran before the second listing: the survey's was the first, without the ref
    assert json.loads(urllib.request.urlopen(front + "/_stats", timeout=30).read())["refs_listings"] == 2
    assert report.deleted.count == 0
    assert doomed <= objects(url)
    assert pulled(url, "m:v3", tmp_path / "h") == tree_files(models["m:v2"])
    assert cas.check_repository(url, deep=True).ok
