"""Checkouts into a folder of the user's (cas checkout / cas status, Cache.checkout / Cache.status): only what
changed is rewritten, what the new version lacks is removed, and a file the user changed is never lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cas import Cache, InvalidInput
from tests.support import synth

from .conftest import cas_cli, tree_files


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """v1: a model with weights, config and a README; v2: a 10% fine-tune of its weights, a new tokenizer, no
    README; the config is the same in both."""
    d = tmp_path_factory.mktemp("versions")
    base = synth.model_tensors(seed=41, total_bytes=8 << 20, layer_bytes=1 << 20)
    v1 = synth.write_model_dir(d / "v1", base)
    (v1 / "README.md").write_text("v1 notes\n")
    (v1 / "extra").mkdir()
    (v1 / "extra" / "vocab.txt").write_text("a\nb\n")
    v2 = synth.write_model_dir(d / "v2", synth.fine_tune(base, 0.10, seed=42))
    (v2 / "tokenizer.json").write_text('{"v": 2}')
    return {"v1": v1, "v2": v2}


@pytest.fixture
def cache(tmp_path, versions) -> Cache:
    c = Cache(tmp_path / "cache")
    c.add(versions["v1"], "m:v1")
    c.add(versions["v2"], "m:v2")
    return c


def inodes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*")
            if p.is_file() and ".cas" not in p.parts}  # fmt: skip


def test_a_checkout_of_v2_over_v1_rewrites_only_what_changed(tmp_path, versions, cache):
    dest = tmp_path / "work"
    first = cache.checkout("m:v1", dest)
    assert {p: b for p, b in tree_files(dest).items() if not p.startswith(".cas/")} == tree_files(versions["v1"])
    before = inodes(dest)
    report = cache.checkout("m:v2", dest)
    assert sorted(report.written) == ["model.safetensors", "tokenizer.json"]
    assert sorted(report.removed) == ["README.md", "extra/vocab.txt"] and not (dest / "extra").exists()
    assert report.kept == 1 and inodes(dest)["config.json"] == before["config.json"]  # not rewritten
    assert {p: b for p, b in tree_files(dest).items() if not p.startswith(".cas/")} == tree_files(versions["v2"])
    assert os.access(dest / "model.safetensors", os.W_OK) and first.mode == "copy"
    again = cache.checkout("m:v2", dest)
    assert again.written == [] and again.removed == [] and again.kept == 3  # idempotent
    assert cache.status(dest).clean and not cache.status(dest, "m:v1").clean


def test_a_checkout_never_overwrites_or_removes_a_file_the_user_changed_unless_forced(tmp_path, versions, cache):
    dest = tmp_path / "work"
    cache.checkout("m:v1", dest)
    (dest / "model.safetensors").write_bytes(b"my own fine-tune")
    (dest / "README.md").write_text("my notes\n")
    (dest / "tokenizer.json").write_text("mine, in the way")  # not cas's: v2 brings its own
    (dest / "scratch.txt").write_text("untracked, and v2 does not name it")
    with pytest.raises(InvalidInput, match=r"would overwrite or remove 3 file\(s\) .*nothing was changed") as e:
        cache.checkout("m:v2", dest)
    assert "'model.safetensors'" in str(e.value) and "'README.md'" in str(e.value)
    assert (dest / "model.safetensors").read_bytes() == b"my own fine-tune"
    assert (dest / "README.md").read_text() == "my notes\n" and (dest / "extra" / "vocab.txt").exists()
    out = cas_cli("checkout", "m:v2", str(dest), home=cache.root, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "--force" in out.stderr
    status = cache.status(dest)
    assert status.modified == ["README.md", "model.safetensors"]
    assert status.untracked == ["scratch.txt", "tokenizer.json"] and status.missing == []
    cas_cli("checkout", "m:v2", str(dest), "--force", home=cache.root)
    assert {p: b for p, b in tree_files(dest).items() if not p.startswith(".cas/")} == {
        **tree_files(versions["v2"]), "scratch.txt": b"untracked, and v2 does not name it"}  # fmt: skip
    assert cas_cli("status", str(dest), home=cache.root, check=False).returncode == 1  # scratch.txt
    (dest / "scratch.txt").unlink()
    out = cas_cli("status", str(dest), "--json", home=cache.root)
    assert json.loads(out.stdout)["clean"] is True and out.returncode == 0


def test_linked_checkouts_share_the_cache_inodes_and_a_copy_replaces_them(tmp_path, versions, cache):
    dest = tmp_path / "work"
    cache.checkout("m:v1", dest, link=True)
    blob = cache.objects.blob_of(next(f for f in cache.tree("m:v1").files if f.path == "model.safetensors"))
    assert (dest / "model.safetensors").stat().st_ino == blob.stat().st_ino
    assert not (dest / "model.safetensors").stat().st_mode & 0o222  # read-only: editing it would edit the cache
    report = cache.checkout("m:v1", dest)  # now writable copies: the same bytes, other inodes
    assert len(report.written) == 4 and (dest / "model.safetensors").stat().st_ino != blob.stat().st_ino
    (dest / "model.safetensors").write_bytes(b"edited")
    assert cache.verify().ok  # the cache's blob is untouched


def test_a_checkout_writes_nothing_through_a_link_out_of_the_folder(tmp_path, versions, cache):
    dest, outside = tmp_path / "work", tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "extra").symlink_to(outside)
    (dest / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(InvalidInput, match="would overwrite or remove 2 file"):
        cache.checkout("m:v1", dest)
    with pytest.raises(InvalidInput, match="extra is in the way of extra/vocab.txt"):
        cache.checkout("m:v1", dest, force=True)
    assert list(outside.iterdir()) == []
    with pytest.raises(InvalidInput, match="inside the cache"):
        cache.checkout("m:v1", cache.root / "snapshots" / "x")


def test_a_selected_checkout_pulls_only_the_selection_when_the_model_is_not_here(tmp_path, versions, cache):
    repo = f"file://{tmp_path / 'repo'}"
    cache.push("m:v2", repo)
    host, dest = tmp_path / "host", tmp_path / "work"
    out = cas_cli("checkout", "m:v2", str(dest), "--remote", repo, "--include", "*.json", "--json", home=host)
    assert sorted(json.loads(out.stdout)["written"]) == ["config.json", "tokenizer.json"]
    assert Cache(host).get("m:v2").partial
    assert cas_cli("status", str(dest), home=host).stdout.startswith("clean")
    (dest / "config.json").unlink()
    assert cas_cli("status", str(dest), home=host, check=False).stdout.splitlines()[0] == "missing: config.json"
