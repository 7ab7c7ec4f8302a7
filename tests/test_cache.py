"""The local cache on real files: the MiniLM model and synthetic safetensors."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from blake3 import blake3

from cas import Cache, CasError, CorruptObject, InvalidInput, InvalidTag, ModelInfo, NotFound
from cas.content.digest import hash_file
from cas.system.dirs import remove_tree
from tests.support import synth

from .conftest import REPO, blobs_of, cas_cli, missing, tree_files


def listing(root: Path) -> set[str]:
    """Every path under root, to prove that nothing was written outside the cache."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_minilm_round_trip_is_byte_identical(cache, minilm):
    info = cache.add(minilm, "minilm:v1", labels={"team": "nlp"}, metadata={"dim": 384})
    snap = cache.materialize("minilm:v1")
    assert tree_files(snap) == tree_files(minilm)
    assert info.file_count == len(tree_files(minilm))
    assert info.size == sum(len(b) for b in tree_files(minilm).values())
    assert cache.get("minilm:v1") == info
    assert info.labels == {"team": "nlp"} and info.metadata == {"dim": 384}


def test_file_id_is_what_b3sum_prints(cache, minilm):
    info = cache.add(minilm, "minilm")
    entry = next(f for f in cache.tree(info).files if f.path == "model.safetensors")
    assert entry.file_id == blake3((minilm / "model.safetensors").read_bytes()).digest()


def test_snapshot_files_are_read_only_hardlinks_to_blobs(cache, minilm):
    cache.add(minilm, "minilm:v1")
    snap = cache.materialize("minilm:v1")
    blob_inodes = {p.stat().st_ino for p in blobs_of(cache)}
    for dirpath, dirs, files in os.walk(snap):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o555
        for n in files:
            st = os.stat(os.path.join(dirpath, n))
            assert st.st_ino in blob_inodes
            assert st.st_nlink >= 2
            assert stat.S_IMODE(st.st_mode) == 0o444


def test_materialize_twice_returns_the_same_directory(cache, minilm):
    cache.add(minilm, "minilm:v1")
    first = cache.materialize("minilm:v1")
    ino = first.stat().st_ino
    assert cache.materialize("minilm:v1") == first
    assert first.stat().st_ino == ino
    assert not [p for p in (cache.root / "snapshots").iterdir() if p.name.startswith(".tmp-")]


def test_executable_bit_is_kept(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "data.txt").write_text("#!/bin/sh\necho hi\n")  # same bytes, not executable
    cache.add(src, "tool:v1")
    snap = cache.materialize("tool:v1")
    assert os.access(snap / "run.sh", os.X_OK)
    assert stat.S_IMODE((snap / "data.txt").stat().st_mode) == 0o444
    assert len(blobs_of(cache)) == 2


def test_identical_files_are_stored_once_across_models_and_versions(cache, minilm, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(minilm, copy)
    (copy / "config.json").write_text('{"changed": true}')
    cache.add(minilm, "minilm:v1")
    cache.add(copy, "other-model:v7")
    assert len(blobs_of(cache)) == len(tree_files(minilm)) + 1
    a = cache.materialize("minilm:v1") / "model.safetensors"
    b = cache.materialize("other-model:v7") / "model.safetensors"
    assert a.stat().st_ino == b.stat().st_ino


def test_same_content_gives_the_same_root(cache, synthetic):
    a = cache.add(synthetic, "a:v1")
    b = cache.add(synthetic, "b:v1")
    assert a.root == b.root
    assert cache.materialize("a:v1") == cache.materialize("b:v1")


def test_single_file_is_stored_under_its_name(cache, synthetic):
    info = cache.add(synthetic / "model.safetensors", "weights:v1")
    snap = cache.materialize(info)
    assert os.listdir(snap) == ["model.safetensors"]
    assert (snap / "model.safetensors").read_bytes() == (synthetic / "model.safetensors").read_bytes()


def test_add_copies_so_later_edits_do_not_reach_the_cache(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"original")
    cache.add(src, "m:v1")
    (src / "w.bin").write_bytes(b"edited!!")
    assert (cache.materialize("m:v1") / "w.bin").read_bytes() == b"original"
    assert (src / "w.bin").stat().st_nlink == 1


def test_latest_resolves_to_the_newest_version(cache, tmp_path):
    versions = []
    for i in range(3):
        d = tmp_path / f"v{i}"
        d.mkdir()
        (d / "w.bin").write_bytes(bytes([i]) * 10)
        versions.append(cache.add(d, "model"))
    assert cache.get("model:latest") == versions[-1]
    assert cache.get("model") == versions[-1]
    assert [i.version for i in cache.list("model")] == [v.version for v in reversed(versions)]
    assert sorted(v.version for v in versions) == [v.version for v in versions]


def test_a_dangling_latest_link_falls_back_to_the_newest_version(cache, tmp_path):
    # what a crash between moving the link and writing the ref leaves behind
    d = tmp_path / "v"
    d.mkdir()
    (d / "w.bin").write_bytes(b"one")
    v1 = cache.add(d, "model:v1")
    link = cache.root / "refs" / "model" / ".latest"
    assert os.readlink(link) == "v1"
    link.unlink()
    link.symlink_to("v2-never-written")
    assert cache.get("model:latest") == v1
    report = cache.verify()
    assert report.ok and any("latest link" in r for r in report.repaired)
    assert os.readlink(link) == "v1"


def test_a_stale_latest_link_is_found_and_fixed_by_verify(cache, tmp_path):
    for v in ("v1", "v2"):
        d = tmp_path / v
        d.mkdir()
        (d / "w.bin").write_bytes(v.encode())
        cache.add(d, f"model:{v}")
    link = cache.root / "refs" / "model" / ".latest"
    link.unlink()
    link.symlink_to("v1")
    report = cache.verify()
    assert any("newest version is v2" in t for t in report.tampered)
    assert cache.get("model").version == "v2"


def test_deleting_the_newest_moves_latest_back(cache, tmp_path):
    for v in ("v1", "v2"):
        d = tmp_path / v
        d.mkdir()
        (d / "w.bin").write_bytes(v.encode())
        cache.add(d, f"model:{v}")
    cache.delete("model:v2")
    assert cache.get("model:latest").version == "v1"
    cache.delete("model:v1")
    assert not (cache.root / "refs" / "model").exists()
    with pytest.raises(NotFound):
        cache.get("model")


def test_list_spans_names_newest_first(cache, synthetic, minilm):
    cache.add(synthetic, "b:v1")
    cache.add(minilm, "a:v1")
    assert [i.tag for i in cache.list()] == ["a:v1", "b:v1"]
    assert [i.tag for i in cache.list("b")] == ["b:v1"]
    assert Cache(cache.root / "elsewhere").list() == []


def test_create_moves_staged_files_into_the_cache(cache, synthetic):
    payload = (synthetic / "model.safetensors").read_bytes()
    with cache.create("trained", labels={"run": "7"}) as staging:
        assert staging.path.is_dir() and staging.path.is_relative_to(cache.root)
        assert staging.tag.startswith("trained:")
        (staging.path / "model.safetensors").write_bytes(payload)
        (staging.path / "sub").mkdir()
        (staging.path / "sub" / "vocab.txt").write_text("a\nb\n")
    info = cache.get(staging.tag)
    assert info.labels == {"run": "7"}
    snap = cache.materialize(info)
    assert (snap / "model.safetensors").read_bytes() == payload
    assert (snap / "sub" / "vocab.txt").read_text() == "a\nb\n"
    assert not staging.path.exists()
    assert not list((cache.root / "tmp").iterdir())


def test_create_records_nothing_on_exception(cache):
    with pytest.raises(RuntimeError, match="training failed"), cache.create("trained") as staging:
        (staging.path / "w.bin").write_bytes(b"partial")
        raise RuntimeError("training failed")
    assert cache.list() == []
    assert not staging.path.exists()
    assert blobs_of(cache) == []


def test_existing_version_with_other_content_is_refused(cache, tmp_path, synthetic):
    cache.add(synthetic, "m:v1")
    again = cache.add(synthetic, "m:v1")
    assert again == cache.get("m:v1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("different")
    with pytest.raises(InvalidInput, match="already exists with other content"):
        cache.add(other, "m:v1")
    assert cache.get("m:v1").root == again.root
    report = cache.verify()
    assert report.ok and report.orphaned  # the refused content's blob and tree were left over, and removed
    assert cache.verify().orphaned == []


def test_symlinks_to_files_are_followed(cache, synthetic, tmp_path):
    # the Hugging Face cache's snapshot directories are made of such links
    snap = tmp_path / "hf_snapshot"
    (snap / "sub").mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(synthetic / "model.safetensors")
    (snap / "sub" / "config.json").symlink_to(os.path.relpath(synthetic / "config.json", snap / "sub"))
    cache.add(snap, "linked:v1")
    files = tree_files(cache.materialize("linked:v1"))
    assert files["model.safetensors"] == (synthetic / "model.safetensors").read_bytes()
    assert files["sub/config.json"] == (synthetic / "config.json").read_bytes()


def test_delete_removes_the_ref_and_unshared_objects(cache, minilm, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(minilm, copy)
    (copy / "extra.txt").write_text("only in v2")
    v1 = cache.add(minilm, "m:v1")
    cache.add(copy, "m:v2")
    cache.materialize("m:v1")
    removed = cache.delete("m:v2")
    assert [i.tag for i in removed] == ["m:v2"]
    with pytest.raises(NotFound):
        cache.get("m:v2")
    assert len(blobs_of(cache)) == len(tree_files(minilm))
    assert tree_files(cache.materialize("m:v1")) == tree_files(minilm)
    cache.delete("m")
    assert cache.list() == [] and blobs_of(cache) == []
    assert not (cache.root / "snapshots" / v1.root).exists()
    assert cache.verify().ok


def test_delete_latest_removes_only_the_newest(cache, synthetic, minilm):
    cache.add(synthetic, "m:v1")
    cache.add(minilm, "m:v2")
    cache.delete("m:latest")
    assert [i.tag for i in cache.list()] == ["m:v1"]


def test_model_info_shape(cache, synthetic):
    before = time.time()
    info = cache.add(synthetic, "m:v1")
    assert isinstance(info, ModelInfo)
    assert (info.tag, info.name, info.version) == ("m:v1", "m", "v1")
    assert len(info.root) == 64 and info.file_count == 2
    assert before <= info.created <= time.time() and abs(info.creation_time.timestamp() - info.created) < 1e-5
    with pytest.raises(AttributeError):
        info.size = 0
    d = info.to_dict()
    assert d["tag"] == "m:v1" and d["size"] == info.size


# -- bad input: each gives one clear error and writes nothing ----------------


@pytest.mark.parametrize(
    "tag,message",
    [
        ("Upper", "lower-case"),
        ("has space", "lower-case"),
        ("m:latest", "reserved"),
        ("", "empty"),
        ("m:" + "9" * 64, "at most 63"),
        ("x" * 64, "at most 63"),
    ],
)
def test_add_with_invalid_tag(cache, synthetic, tag, message):
    with pytest.raises(InvalidTag, match=message):
        cache.add(synthetic, tag)
    assert not cache.root.exists()


def test_add_missing_path(cache, tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        cache.add(tmp_path / "nope", "m")
    assert not cache.root.exists()


def test_add_empty_directory(cache, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="contains no files"):
        cache.add(tmp_path / "empty", "m")
    assert not cache.root.exists()


def test_add_dangling_symlink(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.bin").write_bytes(b"fine")
    (src / "weights.bin").symlink_to(tmp_path / "gone")
    with pytest.raises(InvalidInput, match="dangling symlink"):
        cache.add(src, "m")
    assert not cache.root.exists()


def test_add_symlink_loops(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.bin").write_bytes(b"fine")
    (src / "self").symlink_to("self")
    with pytest.raises(InvalidInput, match="symlink loop"):
        cache.add(src, "m")
    (src / "self").unlink()
    (src / "up").symlink_to("..")
    with pytest.raises(InvalidInput, match="symlink loop"):
        cache.add(src, "m")
    assert not cache.root.exists()


def test_add_special_file(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        cache.add(src, "m")


def test_bad_labels_and_metadata(cache, synthetic):
    with pytest.raises(InvalidInput, match="label"):
        cache.add(synthetic, "m", labels={"k": 1})
    with pytest.raises(InvalidInput, match="metadata"):
        cache.add(synthetic, "m", metadata={"obj": object()})
    assert not cache.root.exists()


def test_delete_unknown_tag(cache, synthetic):
    cache.add(synthetic, "m:v1")
    for tag in ("m:v2", "other:v1", "other", "other:latest"):
        with pytest.raises(NotFound, match="is not in the cache"):
            cache.delete(tag)
    assert [i.tag for i in cache.list()] == ["m:v1"]


def test_get_unknown_tag_says_what_to_do(cache):
    with pytest.raises(NotFound) as e:
        cache.get("ghost:v1")
    assert "ghost:v1" in str(e.value) and str(cache.root) in str(e.value) and "cas add" in str(e.value)


def test_nothing_is_written_outside_the_cache(tmp_path, synthetic):
    cache = Cache(tmp_path / "cache")
    before = listing(tmp_path)
    for bad in (lambda: cache.add(tmp_path / "nope", "m"), lambda: cache.add(synthetic, "Bad")):
        with pytest.raises(CasError):
            bad()
    cache.add(synthetic, "m:v1")
    cache.materialize("m:v1")
    after = listing(tmp_path)
    assert {p for p in after - before if p != "cache" and not p.startswith("cache/")} == set()


# -- verify -----------------------------------------------------------------


def test_verify_finds_and_repairs_a_tampered_snapshot_file(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 1000)
    (src / "b.bin").write_bytes(b"b" * 1000)
    cache.add(src, "m:v1")
    snap = cache.materialize("m:v1")
    # replace a file in the snapshot (not through the hardlink): blobs stay good
    (snap).chmod(0o755)
    (snap / "a.bin").unlink()
    (snap / "a.bin").write_bytes(b"evil")
    (snap / "extra").write_bytes(b"x")
    report = cache.verify()
    assert len(report.tampered) == 1 and "a.bin does not match" in report.tampered[0]
    assert "extra is not part of the model" in report.tampered[0]
    assert report.repaired and report.ok
    assert tree_files(cache.materialize("m:v1")) == tree_files(src)
    assert cache.verify().tampered == []


def test_verify_finds_a_blob_edited_through_its_hardlink(cache, synthetic):
    info = cache.add(synthetic, "m:v1")
    snap = cache.materialize(info)
    target = snap / "config.json"
    os.chmod(target, 0o644)  # what root could do anyway
    target.write_text('{"tampered": true}')
    report = cache.verify()
    assert not report.ok
    assert any("does not match its id" in t for t in report.tampered)
    # the damaged blob and the snapshot sharing it are gone: nothing corrupt can be served
    assert not snap.exists()
    with pytest.raises(CorruptObject, match="missing"):
        cache.materialize(info)
    # storing the model again repairs it
    cache.add(synthetic, "m:v1")
    assert tree_files(cache.materialize(info)) == tree_files(synthetic)
    assert cache.verify().ok


def test_verify_reports_a_blob_whose_bytes_do_not_match_without_repair(cache, synthetic):
    cache.add(synthetic, "m:v1")
    blob = next(p for p in blobs_of(cache) if p.stat().st_size < 1000)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"garbage")
    report = cache.verify(repair=False)
    assert not report.ok and blob.exists()
    assert hash_file(str(blob)) != bytes.fromhex(blob.name)


def test_verify_removes_orphans_and_dead_temporaries(cache, synthetic):
    cache.add(synthetic, "m:v1")
    (cache.root / "blobs" / "ab").mkdir(exist_ok=True)
    orphan = cache.root / "blobs" / "ab" / ("ab" + "0" * 62)
    orphan.write_bytes(b"orphan")
    dead = cache.root / "tmp" / "blob-999999999-1-1-abcdef"
    dead.parent.mkdir(exist_ok=True)
    dead.write_bytes(b"partial")
    report = cache.verify()
    assert str(orphan) in report.orphaned and str(dead) in report.orphaned
    assert not orphan.exists() and not dead.exists()
    assert report.ok


def test_verify_of_a_missing_blob(cache, synthetic):
    cache.add(synthetic, "m:v1")
    victim = blobs_of(cache)[0]
    victim.unlink()
    report = cache.verify("m:v1")
    assert not report.ok and "is missing" in report.missing[0]


def test_synthetic_safetensors_round_trip_all_dtypes(cache, tmp_path):
    for dtype in ("F32", "F16", "BF16", "I8"):
        d = synth.write_model_dir(tmp_path / dtype, synth.model_tensors(3, 2 << 20, dtype))
        cache.add(d, f"m-{dtype.lower()}:v1")
        assert tree_files(cache.materialize(f"m-{dtype.lower()}:v1")) == tree_files(d)
    assert cache.verify().ok


def test_snapshots_on_another_filesystem_are_copies_with_one_warning(tmp_path, synthetic):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.fail("this test needs /dev/shm as a filesystem other than the temporary directory's")
    elsewhere = Path(tempfile.mkdtemp(dir=shm))
    try:
        cache = Cache(tmp_path / "cache")
        (cache.root).mkdir()
        (cache.root / "snapshots").symlink_to(elsewhere)
        cache.add(synthetic, "a:v1")
        cache.add(synthetic / "config.json", "b:v1")
        with pytest.warns(RuntimeWarning, match="another filesystem") as warned:
            snap_a = cache.materialize("a:v1")
            snap_b = cache.materialize("b:v1")
        assert len(warned) == 1
        assert tree_files(snap_a) == tree_files(synthetic)
        assert (snap_b / "config.json").read_bytes() == (synthetic / "config.json").read_bytes()
        assert (snap_a / "config.json").stat().st_dev != blobs_of(cache)[0].stat().st_dev
        assert stat.S_IMODE((snap_a / "config.json").stat().st_mode) == 0o444
        assert cache.verify().ok
    finally:
        remove_tree(elsewhere)


def test_a_cache_inside_a_world_writable_folder_is_not_made_world_writable(tmp_path, synthetic):
    """Only a folder a group shares (setgid, group-writable) passes its group bits on; /tmp's 1777 is not one."""
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(public, 0o1777)
    cache = Cache(public / "nested" / "cache")
    cache.add(synthetic, "m:v1")
    cache.materialize("m:v1")
    for dirpath, dirs, _ in os.walk(public / "nested"):
        for d in dirs:
            mode = os.stat(os.path.join(dirpath, d)).st_mode
            assert not mode & (stat.S_IWOTH | stat.S_ISVTX), f"{dirpath}/{d} is {stat.filemode(mode)}"


# -- one pass over a file (cas.local.ingest): the kernel's copy, read back, chunked and hashed --------------


def _expected(data: bytes) -> tuple[bytes, bytes]:
    from cas.content.chunking import chunk_bytes
    from cas.content.digest import chunk_id
    from cas.content.tree import CHUNK_RECORD

    return blake3(data).digest(), b"".join(CHUNK_RECORD.pack(chunk_id(c), len(c)) for c in chunk_bytes(data))


@pytest.mark.parametrize("size", [0, 1, 70_000, (8 << 20) - 1, 8 << 20, (8 << 20) + 123_457, 37 << 20])
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_digest_file_copies_exactly_what_it_hashes_and_chunks(tmp_path, monkeypatch, size, kernel_copy):
    from cas.local import ingest

    if not kernel_copy:  # a filesystem or kernel without copy_file_range: the copy falls back to pread/pwrite

        def refuse(*args):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(ingest.os, "copy_file_range", refuse)
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen = []
    d = ingest.digest_file(src, copy_to=tmp_path / "copy", progress=seen.append)
    assert (tmp_path / "copy").read_bytes() == data
    assert (d.file_id, d.chunks) == _expected(data) and d.size == size == sum(seen)
    moved = ingest.digest_file(src, durable=True)  # cache.create: hashed in place
    assert (moved.file_id, moved.chunks, moved.size) == (d.file_id, d.chunks, size)


WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
print("ready", flush=True)
end, i = time.monotonic() + 60, 0
while time.monotonic() < end:
    os.pwrite(fd, os.urandom(4096), (i * 7_340_033) % (size - 4096))
    i += 1
"""


def test_a_file_written_while_it_is_added_is_refused_not_stored_mixed(tmp_path):
    """Another process rewrites a weights file during `cas add`: storing it would keep a mix of old and new bytes
    under a hash of that mix, exit 0; it is refused in one line and nothing is stored."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(96 << 20))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(model / "weights.bin")], stdout=subprocess.PIPE,
                              cwd=REPO)  # fmt: skip
    try:
        assert writer.stdout.readline() == b"ready\n"
        proc = cas_cli("add", str(model), "m:v1", home=tmp_path / "cas", check=False)
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{model / 'weights.bin'} changed while it was read; store it again once nothing writes to it" in (
        proc.stderr
    )
    assert Cache(tmp_path / "cas").list() == [] and list((tmp_path / "cas" / "tmp").iterdir()) == []


def test_a_tree_file_swapped_for_another_valid_tree_is_caught(tmp_path):
    """A tree is read back only if its bytes hash to its root: another model's (valid) tree copied over it must
    not make a snapshot of the other model's files, and verify says the tree is damaged."""
    cache = Cache(tmp_path / "cache")
    for name, text in (("a", "first"), ("b", "second")):
        src = tmp_path / name
        src.mkdir()
        (src / f"{name}.txt").write_text(text)
        cache.add(src, f"m:{name}")
    a, b = cache.get("m:a"), cache.get("m:b")
    target = cache.objects.tree_path(a.root)
    os.chmod(target, 0o644)
    target.write_bytes(cache.objects.tree_path(b.root).read_bytes())
    with pytest.raises(
        CorruptObject, match=r"tree .* of m:a .* is damaged \(tree bytes do not hash to .*run 'cas verify'"
    ):
        cache.materialize("m:a")
    assert not cache.snapshots.built(a.root)
    report = cache.verify(repair=False)
    assert any(a.root in line and "m:a" in line for line in report.missing), report.missing


def test_a_durable_add_flushes_each_blob_s_bytes_before_naming_it(tmp_path):
    """Traced as it runs: every file an add publishes as a blob was flushed (its own fsync, or a syncfs of the
    cache's filesystem) after its last write and before its blob name was linked, so a power loss can never
    leave a blob whose bytes do not match its name."""
    if shutil.which("strace") is None:
        missing("strace (apt-get install strace; bash dev test does it as root)")
    model = tmp_path / "model"
    model.mkdir()
    (model / "big.bin").write_bytes(os.urandom(3 << 20))
    (model / "small.bin").write_bytes(os.urandom(5000))
    trace = tmp_path / "add.trace"
    cmd = [
        "strace",
        "-f",
        "-y",
        "-qq",
        "-e",
        "trace=write,pwrite64,copy_file_range,fsync,fdatasync,syncfs,link,linkat",
        "-o",
        str(trace),
        sys.executable,
        "-m",
        "cas",
        "--home",
        str(tmp_path / "home"),
        "add",
        str(model),
        "m:v1",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ, "CAS_DURABLE": "1"})
    events = trace.read_text().splitlines()
    links = [(i, m.group(1)) for i, e in enumerate(events)
             if (m := re.search(r'link(?:at)?\(.*?"([^"]+/tmp/blob-[^"]+)", .*"[^"]+/blobs/', e))]  # fmt: skip
    assert len(links) == 2, events
    for at, src in links:
        touched = [
            i
            for i, e in enumerate(events[:at])
            if re.match(rf"\d+\s+(write|pwrite64|copy_file_range)\(.*<{re.escape(src)}>", e)
        ]
        own = rf"\d+\s+(fsync|fdatasync)\(\d+<{re.escape(src)}>"
        flushed = [i for i, e in enumerate(events[:at]) if re.match(own, e) or re.match(r"\d+\s+syncfs\(", e)]
        assert touched and flushed and max(flushed) > max(touched), (src, events[: at + 1])
