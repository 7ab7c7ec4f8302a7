"""Selections: pulling, materializing and resolving some of a model's files (--include/--exclude), and partial
versions held honestly in the cache.  Bytes are counted at a proxy in front of `cas serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import descriptor
from cas import Cache, InvalidInput, NotFound
from cas.content.selection import Selection
from cas.content.tree import FileEntry, Tree, pack_chunks
from tests.support import synth

from .conftest import cas_cli, stats, tree_files

FP16 = ["*.json", "model.fp16.safetensors"]


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    return synth.write_variant_repo(tmp_path_factory.mktemp("variants") / "m", seed=31, total_bytes=6 << 20)


@pytest.fixture
def repo(tmp_path, variants, server, token, proxy) -> str:
    """The variant model pushed as m:v1 to `cas serve`; returns a proxy URL in front of it, counting bytes."""
    url, _ = server
    src = Cache(tmp_path / "src")
    src.add(variants, "m:v1")
    src.push("m:v1", url)
    return proxy(url)


def selected(variants: Path, patterns: list[str]) -> dict[str, bytes]:
    files = tree_files(variants)
    return {p: b for p, b in files.items() if p.endswith(".json") or p == "model.fp16.safetensors"}


def test_gitignore_patterns_select_as_a_gitignore_file_would():
    paths = ["config.json", "a/b/tokenizer.json", "original/x.pth", "original/keep.json", "onnx/model.onnx",
             "onnx/sub/m.onnx", "model.fp16.safetensors", "sub/model.fp16.safetensors",
             "model.safetensors"]  # fmt: skip
    tree = Tree.build([FileEntry(p, 1, False, bytes([i]) * 32, pack_chunks([(bytes([i]) * 32, 1)]))
                       for i, p in enumerate(paths)])  # fmt: skip

    def pick(include=None, exclude=None):
        return [f.path for f in Selection.of(include, exclude).files(tree, "m:v1")]

    assert pick("*.json") == ["a/b/tokenizer.json", "config.json", "original/keep.json"]
    assert pick("/config.json") == ["config.json"]  # anchored at the top
    assert pick("original/") == ["original/keep.json", "original/x.pth"]
    assert pick(["original/", "!original/*.json"]) == ["original/x.pth"]
    assert pick("onnx/**/*.onnx") == ["onnx/model.onnx", "onnx/sub/m.onnx"]
    assert pick(exclude=["original/", "onnx/"]) == ["a/b/tokenizer.json", "config.json", "model.fp16.safetensors",
                                                   "model.safetensors", "sub/model.fp16.safetensors"]  # fmt: skip
    assert Selection.of(["b", "a", "a"]) == Selection.of(["b", "a"])  # the same selection, the same snapshot
    assert Selection.of() is None and Selection.of([], []) is None
    with pytest.raises(InvalidInput, match="'nothing' matches no file of m:v1"):
        pick(["*.json", "nothing"])
    with pytest.raises(InvalidInput, match="control character"):
        Selection.of(["a\x1b[2Jb"])


def test_a_selected_pull_fetches_only_the_selected_files_and_says_the_version_is_partial(tmp_path, variants, repo):
    host = tmp_path / "host"
    dry = json.loads(cas_cli("pull", "m:v1", "--remote", repo, "--dry-run", "--json", "--include", *FP16,
                             home=host).stdout)  # fmt: skip
    whole = json.loads(cas_cli("pull", "m:v1", "--remote", repo, "--dry-run", "--json", home=host).stdout)
    before = stats(repo)["pack_bytes"]
    out = json.loads(cas_cli("pull", "m:v1", "--remote", repo, "--json", "--include", *FP16, home=host).stdout)
    moved = stats(repo)["pack_bytes"] - before
    assert out["partial"] is True and out["bytes_transferred"] == moved == dry["bytes_to_fetch"]
    assert moved < 0.2 * whole["bytes_to_fetch"]  # fp16 is a fifth of the weights; the rest never moved
    listed = json.loads(cas_cli("list", "--json", home=host).stdout)
    assert [(i["tag"], i["partial"], i["files_here"]) for i in listed] == [("m:v1", True, 4)]
    shown = json.loads(cas_cli("show", "m:v1", "--json", home=host).stdout)
    assert sorted(f["path"] for f in shown["files"] if f["here"]) == sorted(selected(variants, FP16))
    folder = Path(cas_cli("materialize", "m:v1", "--include", *FP16, home=host).stdout.strip())
    assert tree_files(folder) == selected(variants, FP16)
    assert not os.access(folder, os.W_OK) or os.geteuid() == 0
    assert oct(folder.stat().st_mode & 0o777) == "0o555"


def test_a_later_whole_pull_fetches_only_the_rest_and_makes_the_version_whole(tmp_path, variants, repo):
    host = Cache(tmp_path / "host")
    whole = host.estimate_pull("m:v1", repo).bytes_to_fetch
    first = host.pull("m:v1", repo, include=FP16)
    second = host.pull("m:v1", repo)
    assert first.info.partial and not second.info.partial and not host.get("m:v1").partial
    assert stats(repo)["pack_bytes"] == first.bytes_fetched + second.bytes_fetched
    assert first.bytes_fetched + second.bytes_fetched <= whole * 1.02  # nothing fetched twice
    assert tree_files(host.materialize("m:v1")) == tree_files(variants)
    again = host.pull("m:v1", repo, include=["*.onnx"])  # covered already: nothing moves
    assert again.bytes_fetched == 0 and not again.info.partial


def test_a_partial_version_is_verified_for_what_is_here_and_gc_counts_only_that(tmp_path, variants, repo):
    host = Cache(tmp_path / "host")
    host.pull("m:v1", repo, include=FP16)
    host.materialize("m:v1", include=FP16)
    report = host.verify()
    assert report.ok and not report.missing, report
    space = host.du()
    here = sum(len(b) for b in selected(variants, FP16).values())
    assert space.versions[0].on_disk == pytest.approx(here, rel=0.05) and space.logical == here
    blob = host.objects.blob_of(next(f for f in host.tree("m:v1").files if f.path == "model.fp16.safetensors"))
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"\0" * 64)
    damaged = host.verify()
    assert any("model.fp16.safetensors" in t for t in damaged.tampered) and not damaged.missing
    assert not blob.exists()  # removed so it is never served; the selection is no longer here
    assert host.resolve("m:v1", remote=repo, include=FP16).partial  # pulled back
    assert tree_files(host.materialize("m:v1", include=FP16)) == selected(variants, FP16)
    evicted = host.gc(1)  # a budget of one byte: a pulled version, even partial, can come back
    assert [i.tag for i in evicted.evicted] == ["m:v1"] and host.list() == []


def test_a_partial_version_cannot_be_pushed_exported_or_materialized_whole(tmp_path, repo):
    host = tmp_path / "host"
    cas_cli("pull", "m:v1", "--remote", repo, "--include", *FP16, home=host)
    for args, doing in ((["push", "m:v1", "--remote", f"file://{tmp_path / 'other'}"], "a push"),
                        (["export", "m:v1", str(tmp_path / "m.cas")], "an export")):  # fmt: skip
        out = cas_cli(*args, home=host, check=False)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert f"m:v1 is partial in the cache at {host} (4 of 9 files here), and {doing} needs all" in out.stderr
        assert "'cas pull m:v1'" in out.stderr
    assert not (tmp_path / "other").exists() and not (tmp_path / "m.cas").exists()
    with pytest.raises(NotFound, match=r"m:v1 is partial in the cache .* 5 of the files asked for are not here"):
        Cache(host).materialize("m:v1")
    with pytest.raises(NotFound, match=r"pull them with 'cas pull m:v1 --include model.onnx'"):
        Cache(host).materialize("m:v1", include="model.onnx")


def test_a_selection_a_partial_version_lacks_offline_says_it_is_partial(tmp_path, repo):
    host = tmp_path / "host"
    cas_cli("pull", "m:v1", "--remote", repo, "--include", *FP16, home=host)
    out = cas_cli("materialize", "m:v1", "--include", "onnx/", home=host, check=False,
                  env={**os.environ, "CAS_OFFLINE": "1"})  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "m:v1 is partial in the cache" in out.stderr and "'cas pull m:v1 --include onnx/'" in out.stderr
    assert "CAS_OFFLINE is set, so it was not pulled" in out.stderr


def test_an_include_that_matches_nothing_pulls_nothing(tmp_path, repo):
    host = tmp_path / "host"
    out = cas_cli("pull", "m:v1", "--remote", repo, "--include", "*.gguf", home=host, check=False)
    assert out.returncode == 1 and "--include '*.gguf' matches no file of m:v1" in out.stderr
    assert stats(repo)["pack_requests"] == 0 and Cache(host).list() == []


def test_two_declarations_of_one_tag_with_different_selections_get_one_version_and_their_own_files(
    tmp_path, variants, repo, server
):
    url, _ = server
    cache = Cache(tmp_path / "host")

    class Service:
        fp16 = descriptor.Model("m:latest", cache=cache, remote=repo, include=FP16)
        onnx = descriptor.Model("m:latest", cache=cache, remote=repo, include=["onnx/", "*.json"])

    s = Service()
    first = s.fp16
    newer = Cache(tmp_path / "src")
    newer.add(variants / "config.json", "m:v2")  # the repository's latest moves on in between
    newer.push("m:v2", url)
    second = s.onnx
    assert first.tag == second.tag == "m:v1" and first.path != second.path
    assert tree_files(first.path) == selected(variants, FP16)
    assert sorted(tree_files(second.path)) == ["config.json", "onnx/model.onnx", "tokenizer.json",
                                               "tokenizer_config.json"]  # fmt: skip
    assert cache.get("m:v1").partial
    with pytest.raises(InvalidInput, match="control character"):
        descriptor.Model("m:latest", include=["\x07"])  # refused when the class is defined
    service = Service()
    assert service.fp16.path == first.path  # a later instance, the same snapshot


def test_verify_repairs_a_damaged_partial_snapshot(tmp_path, variants, repo):
    host = Cache(tmp_path / "host")
    host.pull("m:v1", repo, include=FP16)
    folder = host.materialize("m:v1", include=FP16)
    os.chmod(folder, 0o755)
    (folder / "config.json").unlink()
    (folder / "intruder.bin").write_bytes(b"x")
    report = host.verify()
    assert any("config.json is missing" in t and "intruder.bin is not part of the selection" in t
               for t in report.tampered), report.tampered  # fmt: skip
    assert report.ok and tree_files(host.materialize("m:v1", include=FP16)) == selected(variants, FP16)
