"""Symlinks and hardlinks in what ``create`` moves in and ``add`` copies: the target's bytes are stored.

A blob is always a regular file whose bytes hash to its name, and the
user's own files (a link's target, a file hardlinked into staging) are
never moved, chmod-ed or shared with the cache.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cas import Cache, InvalidInput
from cas.content.digest import hash_file

from .conftest import blobs_of, cas_cli, tree_files


def user_files(tmp_path: Path) -> Path:
    """A user's folder outside the cache: a file, and a folder with one file."""
    mine = tmp_path / "mine"
    (mine / "folder").mkdir(parents=True)
    (mine / "weights.bin").write_bytes(b"the user's weights")
    (mine / "folder" / "inner.txt").write_bytes(b"inner")
    for p in (mine / "weights.bin", mine / "folder" / "inner.txt"):
        p.chmod(0o644)
    return mine


def modes(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: its mode and inode (a move or chmod would change them)."""
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_ino) for p in folder.rglob("*")}


def check_blobs(cache: Cache) -> None:
    blobs = blobs_of(cache)
    assert blobs
    for b in blobs:
        assert stat.S_ISREG(os.lstat(b).st_mode) and os.lstat(b).st_nlink >= 1, b
        assert hash_file(str(b)).hex() == b.name.removesuffix(".x"), b


def edit_and_check(cache: Cache, tag: str, mine: Path, expected: dict[str, bytes]) -> None:
    """Later edits to the user's files reach neither the snapshot nor the blobs."""
    (mine / "weights.bin").write_bytes(b"edited later")
    (mine / "folder" / "inner.txt").write_bytes(b"edited too")
    assert tree_files(cache.materialize(tag)) == expected
    report = cache.verify(repair=False)
    assert report.ok and not report.tampered, report.tampered


def test_create_copies_a_symlinked_file_and_leaves_it_as_it_was(cache, tmp_path):
    mine = user_files(tmp_path)
    before = modes(mine)
    with cache.create("linked") as staging:
        (staging.path / "model.bin").symlink_to(mine / "weights.bin")
        (staging.path / "config.json").write_text("{}")
    assert modes(mine) == before  # not moved, not made read-only
    check_blobs(cache)
    assert cache.verify(repair=False).ok
    expected = {"model.bin": b"the user's weights", "config.json": b"{}"}
    assert tree_files(cache.materialize("linked")) == expected
    edit_and_check(cache, "linked", mine, expected)


def test_create_copies_a_symlinked_folder_and_leaves_it_as_it_was(cache, tmp_path):
    mine = user_files(tmp_path)
    before = modes(mine)
    with cache.create("linked") as staging:
        (staging.path / "sub").symlink_to(mine / "folder", target_is_directory=True)
        (staging.path / "own.txt").write_text("own")
    assert modes(mine) == before  # its file was not moved out of the user's folder
    check_blobs(cache)
    expected = {"sub/inner.txt": b"inner", "own.txt": b"own"}
    assert tree_files(cache.materialize("linked")) == expected
    edit_and_check(cache, "linked", mine, expected)


def test_create_copies_a_file_hardlinked_into_staging(cache, tmp_path):
    mine = user_files(tmp_path)
    with cache.create("linked") as staging:
        os.link(mine / "weights.bin", staging.path / "model.bin")
    assert stat.S_IMODE((mine / "weights.bin").stat().st_mode) == 0o644
    blob = cache.objects.blob_of(cache.tree("linked").files[0])
    assert not os.path.samefile(blob, mine / "weights.bin")
    edit_and_check(cache, "linked", mine, {"model.bin": b"the user's weights"})


def test_create_still_moves_its_own_files(cache):
    with cache.create("own") as staging:
        (staging.path / "a.bin").write_bytes(b"a" * 1000)
        ino = (staging.path / "a.bin").stat().st_ino
    assert cache.objects.blob_of(cache.tree("own").files[0]).stat().st_ino == ino


def test_create_refuses_a_dangling_link_naming_it_and_leaves_nothing(cache, tmp_path):
    with pytest.raises(InvalidInput) as e:
        with cache.create("dangling") as staging:
            (staging.path / "ok.bin").write_bytes(b"fine")
            (staging.path / "gone.bin").symlink_to(tmp_path / "nowhere")
    assert f"gone.bin is a dangling symlink (to '{tmp_path / 'nowhere'}'); fix or remove it" in str(e.value)
    assert "\n" not in str(e.value)
    assert cache.list() == [] and blobs_of(cache) == [] and os.listdir(cache.root / "tmp") == []


def test_cas_add_of_a_folder_with_links_stores_their_targets(tmp_path):
    mine = user_files(tmp_path)
    src = tmp_path / "export"
    src.mkdir()
    (src / "model.bin").symlink_to(mine / "weights.bin")
    (src / "sub").symlink_to(mine / "folder", target_is_directory=True)
    (src / "same.bin").symlink_to("model.bin")  # relative, inside the folder
    (src / "gone.bin").symlink_to(tmp_path / "nowhere")
    home = tmp_path / "home"
    refused = cas_cli("add", str(src), "m:v1", home=home, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr == (f"cas: error: {src}/gone.bin is a dangling symlink (to '{tmp_path / 'nowhere'}'); fix "
                              "or remove it and try again\n")  # fmt: skip
    assert not (home / "refs").exists() or not any((home / "refs").iterdir())
    (src / "gone.bin").unlink()
    before = modes(mine)
    cas_cli("add", str(src), "m:v1", home=home)
    assert modes(mine) == before
    cache = Cache(home)
    check_blobs(cache)
    expected = {"model.bin": b"the user's weights", "same.bin": b"the user's weights", "sub/inner.txt": b"inner"}
    edit_and_check(cache, "m:v1", mine, expected)
