"""Export files: ``cas export`` / ``cas import`` carry a model between caches as one stream, every chunk
verified on the way in, files already here reused, memory bounded, and a damaged or hostile file refused
with one line and nothing stored."""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from blake3 import blake3

import descriptor
from cas import Cache, CasError, InvalidInput
from cas.content import codec
from cas.content.tree import CHUNK_RECORD
from cas.sync.exportfile import END, MAGIC, VERSION, blobs_in_order
from tests.support import synth

from .conftest import REPO, cas_cli, edit_largest_blob, tree_files
from .reliability.test_hostile import zstd_bomb


def cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cas", "--home", str(home), *args]


def stored_objects(cache: Cache) -> list[str]:
    """What a cache holds, locks aside: refs, trees, blobs, snapshots and temporaries."""
    root = cache.root
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "locks"
    )


def test_round_trip_through_a_real_pipe(tmp_path, minilm):
    src = Cache(tmp_path / "a")
    info = src.add(minilm, "m:v1")
    export = subprocess.Popen(cli(src.root, "export", "m:v1", "-"), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)  # fmt: skip
    imported = subprocess.run(cli(tmp_path / "b", "import", "-"), cwd=REPO, stdin=export.stdout, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    export.stdout.close()  # type: ignore[union-attr]
    assert export.wait(timeout=300) == 0, export.stderr.read()  # type: ignore[union-attr]
    assert imported.returncode == 0, imported.stderr
    wrote = re.match(r"exported m:v1 \(91\.6 MB\): wrote (\d+\.\d MB), ", export.stderr.read().decode())  # type: ignore[union-attr]
    assert wrote and float(wrote[1].split()[0]) < 80  # encoded: smaller than the model
    assert imported.stdout.startswith(f"imported m:v1 (91.6 MB): read {wrote[1]}, reused 0 B already here, ")
    dest = Cache(tmp_path / "b")
    assert dest.get("m:v1") == info
    assert dest.refs.remotes(dest.get("m:v1")) == []  # stored here only, like cas add
    assert tree_files(dest.materialize("m:v1")) == tree_files(minilm)
    assert dest.verify().ok


def test_a_descriptor_finds_an_imported_model_offline(tmp_path, minilm, monkeypatch):
    src = Cache(tmp_path / "a")
    src.add(minilm, "m:v1")
    src.export_model("m:v1", tmp_path / "m.casx")
    cas_cli("import", str(tmp_path / "m.casx"), home=tmp_path / "b")
    monkeypatch.setenv("CAS_OFFLINE", "1")
    monkeypatch.delenv("CAS_REMOTE", raising=False)

    class Service:
        model = descriptor.Model("m:v1", cache=tmp_path / "b")

    path = Service().model.path
    assert (path / "model.safetensors").read_bytes() == (minilm / "model.safetensors").read_bytes()


def test_export_to_a_path_writes_nothing_in_the_cache_and_nothing_half_visible(tmp_path, synthetic):
    src = Cache(tmp_path / "a")
    src.add(synthetic, "m:v1")
    before = stored_objects(src)
    (tmp_path / "out").mkdir()
    stats = src.export_model("m:v1", tmp_path / "out" / "m.casx")
    assert stored_objects(src) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.casx"]  # the temporary was renamed
    assert stats.stream_bytes == (tmp_path / "out" / "m.casx").stat().st_size


def test_export_errors_are_one_line_naming_what_the_user_gave(tmp_path, synthetic):
    Cache(tmp_path / "a").add(synthetic, "m:v1")
    got = cas_cli("export", "m:v1", str(tmp_path / "no" / "m.casx"), home=tmp_path / "a", check=False)
    assert got.stderr == f"cas: error: No such file or directory ({tmp_path / 'no' / 'm.casx'})\n"
    got = cas_cli("export", "m:v2", str(tmp_path / "m.casx"), home=tmp_path / "a", check=False)
    assert got.returncode == 1 and got.stderr.startswith("cas: error: model m:v2 ") and got.stderr.count("\n") == 1
    assert not (tmp_path / "m.casx").exists()


def test_file_objects_and_importing_twice(tmp_path, synthetic):
    src = Cache(tmp_path / "a")
    info = src.add(synthetic, "m:v1")
    buf = io.BytesIO()
    src.export_model("m:v1", buf)
    dest = Cache(tmp_path / "b")
    first = dest.import_model(io.BytesIO(buf.getvalue()))
    assert first.info == info and first.bytes_reused == 0 and first.stream_bytes == len(buf.getvalue())
    again = dest.import_model(io.BytesIO(buf.getvalue()))  # the same root under the tag: a no-op success
    assert again.info == info
    (tmp_path / "m.casx").write_bytes(buf.getvalue())
    got = cas_cli("import", str(tmp_path / "m.casx"), home=dest.root)
    assert got.stdout == "imported m:v1 (25.2 MB): every file was here already, none written\n"
    assert tree_files(dest.materialize("m:v1")) == tree_files(synthetic)


def test_a_tag_here_with_other_content_is_refused(tmp_path, synthetic, minilm):
    src = Cache(tmp_path / "a")
    src.add(synthetic, "m:v1")
    src.export_model("m:v1", tmp_path / "m.casx")
    dest = Cache(tmp_path / "b")
    mine = dest.add(minilm, "m:v1")
    with pytest.raises(InvalidInput, match=r"^model m:v1 already exists here with other content .* 'cas rm m:v1'"):
        dest.import_model(tmp_path / "m.casx")
    assert dest.list() == [mine]


def test_import_reuses_the_files_already_here(tmp_path, synthetic):
    src = Cache(tmp_path / "a")
    src.add(synthetic, "m:v1")
    src.export_model("m:v1", tmp_path / "m.casx")
    part = tmp_path / "part"
    part.mkdir()
    (part / "model.safetensors").write_bytes((synthetic / "model.safetensors").read_bytes())
    dest = Cache(tmp_path / "b")
    dest.add(part, "other:v1")
    held = dest.objects.blob_of(dest.tree("other:v1").files[0])
    inode = held.stat().st_ino
    got = json.loads(cas_cli("import", str(tmp_path / "m.casx"), "--json", home=dest.root).stdout)
    assert got["bytes_reused"] == (synthetic / "model.safetensors").stat().st_size
    assert held.stat().st_ino == inode  # not written again
    assert tree_files(dest.materialize("m:v1")) == tree_files(synthetic)
    assert len([p for p in (dest.root / "blobs").rglob("*") if p.is_file()]) == 2  # config.json is the new one


BOUNDED = """
import resource, sys
from cas import Cache
from tests.support.procs import peak_mb
cache = Cache(sys.argv[2], durable=False)
cache.export_model("big:v1", sys.argv[3]) if sys.argv[1] == "export" else cache.import_model(sys.argv[3])
print(peak_mb())
"""


def test_memory_stays_bounded_for_a_file_far_larger_than_the_bound(tmp_path):
    """A 300 MB weights file goes out and comes in chunk by chunk: peak RSS stays far below its size."""
    model = synth.write_model_dir(tmp_path / "big", synth.model_tensors(seed=7, total_bytes=300 << 20))
    src = Cache(tmp_path / "a", durable=False)
    src.add(model, "big:v1")
    peaks = {}
    for op, home in (("export", src.root), ("import", tmp_path / "b")):
        out = subprocess.run([sys.executable, "-c", BOUNDED, op, str(home), str(tmp_path / "big.casx")], cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
        peaks[op] = float(out.stdout)
    assert max(peaks.values()) < 120, peaks  # the weights file alone is 300 MB; measured: 46 and 51 MB
    assert tree_files(Cache(tmp_path / "b").materialize("big:v1")) == tree_files(model)


# -- damaged and hostile export files ------------------------------------------------


def write_export(
    ref: bytes, tree: bytes, chunks: list[bytes], signatures: bytes = b"", version: int = VERSION
) -> bytes:
    """An export file from its parts, written from the format as documented (not with cas's writer); format 1
    has no signatures record."""
    body = MAGIC + bytes([version])
    for doc in (ref, tree, *([signatures] if version >= 2 else []), *chunks):
        body += struct.pack(">I", len(doc)) + doc
    return body + END + blake3(body).digest()


@pytest.fixture
def honest(tmp_path, synthetic) -> tuple[bytes, Cache]:
    src = Cache(tmp_path / "src")
    src.add(synthetic, "m:v1")
    buf = io.BytesIO()
    src.export_model("m:v1", buf)
    return buf.getvalue(), src


def chunks_of(src: Cache, encode=codec.encode) -> list[bytes]:
    """The encoded chunks of m:v1, in export order."""
    out = []
    for f in blobs_in_order(src.tree("m:v1")):
        data, offset = src.objects.blob_of(f).read_bytes(), 0
        for _, length in f.chunk_list():
            out.append(encode(data[offset : offset + length]))
            offset += length
    return out


def forged(src: Cache, files: list[list], chunks: list[bytes] | None = None) -> bytes:
    """An export of m:forged whose tree lists ``files``, with a ref that matches it."""
    tree = msgpack.packb([1, files], use_bin_type=True)
    info = src.get("m:v1")._replace(version="forged", root=blake3(tree).hexdigest(), size=sum(f[1] for f in files),
                                    file_count=len(files))  # fmt: skip
    return write_export(info.encode(), tree, chunks if chunks is not None else chunks_of(src))


def assert_refused(tmp_path: Path, data: bytes, pattern: str) -> None:
    """``cas import`` of ``data`` fails with one line matching ``pattern`` and the cache holds nothing."""
    (tmp_path / "bad.casx").write_bytes(data)
    home = tmp_path / "victim"
    got = cas_cli("import", str(tmp_path / "bad.casx"), home=home, check=False)
    assert got.returncode == 1, got.stdout
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: "), got.stderr
    assert re.search(pattern, lines[0]), lines[0]
    victim = Cache(home)
    assert victim.list() == []
    assert stored_objects(victim) == []
    assert not list(tmp_path.glob("**/evil*"))


def test_cas_writes_the_documented_format(honest):
    """The file is exactly what ``cas.sync.exportfile``'s docstring describes, built here without cas's writer."""
    data, src = honest
    assert data == write_export(src.get("m:v1").encode(), src.tree("m:v1").encode(), chunks_of(src))


def test_a_file_of_format_1_still_imports(tmp_path, honest):
    """Format 1 (before the signatures record) is still read: files written by an older cas stay importable."""
    _, src = honest
    old = write_export(src.get("m:v1").encode(), src.tree("m:v1").encode(), chunks_of(src), version=1)
    dest = Cache(tmp_path / "dest")
    assert dest.import_model(io.BytesIO(old)).info.root == src.get("m:v1").root
    assert tree_files(dest.materialize("m:v1")) == tree_files(src.materialize("m:v1"))


@pytest.mark.parametrize("cut", [0, 5, 12, 40, 300, "middle", -37, -1])
def test_a_truncated_file_is_refused(tmp_path, honest, cut):
    data, _ = honest
    at = len(data) // 2 if cut == "middle" else cut
    assert_refused(tmp_path, data[:at], r"is empty|not a cas export file|truncated")


def test_a_flipped_byte_in_a_chunk_is_refused(tmp_path, honest):
    data, src = honest
    tree = src.tree("m:v1").encode()
    first_chunk = len(MAGIC) + 1 + 4 + len(src.get("m:v1").encode()) + 4 + len(tree) + 4 + 4  # no signatures
    bad = bytearray(data)
    bad[first_chunk + 100] ^= 0x01
    assert_refused(tmp_path, bytes(bad), r"chunk 0 of .* is damaged .*export the model again")


def test_a_flipped_byte_in_a_file_already_here_is_caught_by_the_end_check(tmp_path, honest, synthetic):
    data, _ = honest
    victim = Cache(tmp_path / "victim")
    victim.add(synthetic, "same:v1")  # every blob is here: the import reads their chunks past
    bad = bytearray(data)
    bad[-100] ^= 0x01
    (tmp_path / "bad.casx").write_bytes(bytes(bad))
    got = cas_cli("import", str(tmp_path / "bad.casx"), home=victim.root, check=False)
    assert got.stderr.startswith("cas: error: ") and "end check does not match" in got.stderr, got.stderr
    assert [i.tag for i in victim.list()] == ["same:v1"]


def test_wrong_magic_another_version_and_trailing_bytes_are_refused(tmp_path, honest):
    data, _ = honest
    assert_refused(tmp_path, b"PK\x03\x04" + data[4:], r"is not a cas export file .* 'cas export'")
    assert_refused(
        tmp_path, data[: len(MAGIC)] + b"\x07" + data[len(MAGIC) + 1 :], r"of format 7; this cas reads formats 1 to 2"
    )
    assert_refused(tmp_path, data + b"x", r"bytes follow its end marker")


@pytest.mark.parametrize("path", ["../evil", "/tmp/evil", "a/../../evil", "a\\\\..\\\\evil", "./evil", ""])
def test_tree_paths_that_leave_the_model_are_refused(tmp_path, honest, path):
    _, src = honest
    one = list(src.tree("m:v1").files[0]._replace(path=path))
    assert_refused(
        tmp_path, forged(src, [one]), r"path .* (is empty|is absolute|contains|has an empty, '\.' or '\.\.')"
    )


@pytest.mark.parametrize("doc", [b"\x91" * 100_000 + b"\xc0", b"\xdd\xff\xff\xff\xff", msgpack.packb([1, [[b"x", 1]]])],
                         ids=["nested 100,000 deep", "claims 4 billion items", "entry of the wrong shape"])  # fmt: skip
def test_trees_meant_to_exhaust_memory_are_refused(tmp_path, honest, doc):
    _, src = honest
    info = src.get("m:v1")._replace(version="forged", root=blake3(doc).hexdigest())
    assert_refused(tmp_path, write_export(info.encode(), doc, []), r"describes a model cas refuses: tree")


def test_a_tree_entry_cannot_claim_to_be_a_symlink(tmp_path, honest):
    _, src = honest
    one = src.tree("m:v1").files[0]
    for flag in (0o120777, "symlink", b"/etc/passwd"):
        assert_refused(
            tmp_path, forged(src, [list(one._replace(executable=flag))]), r"executable flag .* not a boolean"
        )


def test_sizes_beyond_reason_are_refused(tmp_path, honest):
    _, src = honest
    f = src.tree("m:v1").files[0]
    assert_refused(tmp_path, forged(src, [list(f._replace(size=1 << 50))]), r"size")
    cid, _ = next(iter(f.chunk_list()))
    huge = CHUNK_RECORD.pack(cid, 0xFFFFFFFF) + f.chunks[CHUNK_RECORD.size :]
    assert_refused(tmp_path, forged(src, [list(f._replace(chunks=huge))]), r"chunk length 4294967295 is outside")


def test_documents_and_chunks_claiming_more_than_allowed_are_refused(tmp_path, honest):
    data, src = honest
    huge_ref = MAGIC + bytes([VERSION]) + struct.pack(">I", 0xFFFFFFF0)
    assert_refused(tmp_path, huge_ref + data[len(huge_ref) :], r"the ref record claims 4294967280 bytes, more than")
    ref, tree = src.get("m:v1").encode(), src.tree("m:v1").encode()
    chunks = chunks_of(src)
    chunks[0] = b"\x00" * (1 << 20)  # longer than the chunk it stands for: refused before it is read
    assert_refused(tmp_path, write_export(ref, tree, chunks), r"chunk 0 of .* claims 1048576 bytes, more than")


def test_decompression_bombs_are_refused(tmp_path, honest):
    """Every large chunk a frame that declares the chunk's own size and inflates to 64 MB: refused on the first."""
    _, src = honest
    ref, tree = src.get("m:v1").encode(), src.tree("m:v1").encode()
    lengths = [length for f in blobs_in_order(src.tree("m:v1")) for _, length in f.chunk_list()]
    chunks = [zstd_bomb(n) if n > 4096 else honest_chunk for n, honest_chunk in zip(lengths, chunks_of(src))]
    assert_refused(tmp_path, write_export(ref, tree, chunks), r"chunk 0 of model.safetensors is damaged .*zstd frame")
    small = [zstd_bomb(n) for n in lengths]  # a frame longer than the chunk it stands for is not even read
    assert_refused(tmp_path, write_export(ref, tree, small), r"chunk 0 of config.json claims 2068 bytes, more than")


def test_a_ref_that_disagrees_with_its_tree_is_refused(tmp_path, honest):
    _, src = honest
    f = src.tree("m:v1").files[0]
    tree = msgpack.packb([1, [list(f)]], use_bin_type=True)
    info = src.get("m:v1")._replace(version="forged", root=blake3(tree).hexdigest())  # the size of two files
    assert_refused(tmp_path, write_export(info.encode(), tree, chunks_of(src)), r"disagree on size or file count")
    other = src.get("m:v1")._replace(version="forged", root="ab" * 32)
    assert_refused(tmp_path, write_export(other.encode(), src.tree("m:v1").encode(), []), r"do not hash to")


def test_errors_name_the_stream(tmp_path, honest):
    data, _ = honest
    home = tmp_path / "victim"
    got = subprocess.run(cli(home, "import", "-"), cwd=REPO, input=data[:1000], capture_output=True, timeout=60)
    assert got.returncode == 1
    assert got.stderr.decode().startswith("cas: error: stdin is not a whole cas export file: it ends in the middle")
    with pytest.raises(CasError, match="the export stream|truncated"):
        Cache(home).import_model(io.BytesIO(data[:1000]))


@pytest.mark.parametrize("created", [math.inf, math.nan, 1e300, -1.0, True])
def test_creation_times_out_of_range_are_refused(tmp_path, honest, created):
    """+inf, NaN or 1e300 made `cas list` and `cas show` of the whole cache fail after the import."""
    _, src = honest
    info = src.get("m:v1")._replace(version="forged", created=created)
    assert_refused(tmp_path, write_export(info.encode(), src.tree("m:v1").encode(), chunks_of(src)), "creation time")


def test_a_repository_ref_with_a_time_out_of_range_is_refused_and_the_cache_lists(tmp_path, synthetic):
    src = Cache(tmp_path / "src")
    src.add(synthetic, "m:v1")
    repo = tmp_path / "repo"
    src.push("m:v1", f"file://{repo}")
    ref_file = repo / "refs" / "m" / "v1"
    os.chmod(ref_file, 0o644)
    ref_file.write_bytes(src.get("m:v1")._replace(created=1e300).encode())
    home = tmp_path / "victim"
    got = cas_cli("pull", "m:v1", "--remote", f"file://{repo}", home=home, check=False)
    assert got.returncode == 1 and len(got.stderr.splitlines()) == 1 and "creation time 1e+300" in got.stderr
    assert cas_cli("list", home=home).returncode == 0 and Cache(home).list() == []


def test_a_blob_changed_after_add_is_never_exported(tmp_path, minilm):
    """Every chunk an export reads from a blob is hashed again: a blob edited through a hardlink makes the export
    fail in one line naming what to run, and no export file is left."""
    cache = Cache(tmp_path / "cache")
    edit_largest_blob(cache, cache.add(minilm, "m:v1"))
    out = cas_cli("export", "m:v1", str(tmp_path / "m.cas"), home=cache.root, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "does not hold chunk" in out.stderr and "run 'cas verify'" in out.stderr
    assert not (tmp_path / "m.cas").exists()
