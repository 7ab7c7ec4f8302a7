"""A hostile repository: every forged ref, tree, locator or pack is refused with a clear error, and nothing
is written outside the cache.

Each case starts from an honest push to a ``file://`` repository and forges
one object; the victim pulls it into a clean cache under ``tmp_path``.
Symlink tricks: trees cannot express a link (a type where the executable
flag goes is refused), a repository's links to devices and pipes are
refused before any read, and a link planted where a pull writes its part
file is replaced, never followed.  A server that answers a tree request
with gigabytes is cut off at the documents' limit.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import msgpack
import pytest
import zstandard
from blake3 import blake3

from cas import Cache, CasError
from cas.content import codec
from cas.content.tree import CHUNK_RECORD
from cas.repo.format import (
    FORMAT,
    Location,
    decode_locator,
    encode_locator,
    locator_key,
    ref_key,
    tree_key,
)

from ..conftest import pull_in_child, tree_files

pytestmark = pytest.mark.reliability
A_MILLION = 1_000_000  # the format's limit, as docs/format.md states it: a tree lists at most a million files


@pytest.fixture
def honest(tmp_path, synthetic):
    src = Cache(tmp_path / "src")
    info = src.add(synthetic, "m:v1")
    repo = tmp_path / "repo"
    src.push("m:v1", f"file://{repo}")
    return repo, info, src.tree(info)


def publish(repo: Path, info, tree_bytes: bytes, locator: bytes | None = None, version: str = "forged") -> None:
    """Put a forged tree (and locator) under a new ref, as a hostile repository would serve it."""
    root = blake3(tree_bytes).hexdigest()
    (repo / tree_key(root)).write_bytes(tree_bytes)
    (repo / locator_key(root)).write_bytes(
        locator if locator is not None else (repo / locator_key(info.root)).read_bytes()
    )
    (repo / ref_key("m", version)).write_bytes(info._replace(version=version, root=root).encode())


def raw_tree(entries: list[list]) -> bytes:
    return msgpack.packb([1, entries], use_bin_type=True)


def entry(tree, path: str, **changes) -> list:
    f = tree.files[0]._replace(path=path, **changes)
    return list(f)


def assert_refused(tmp_path: Path, repo: Path, match: str) -> None:
    victim = Cache(tmp_path / "victim")
    outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "victim")
    with pytest.raises(CasError, match=match):
        victim.pull("m:forged", f"file://{repo}")
    assert victim.list() == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "victim") == outside  # nothing beside the cache
    assert not list(Path("/tmp").glob("evil*")) and not list(victim.root.rglob("*evil*"))  # nor inside it


@pytest.mark.parametrize("path", ["../evil", "/tmp/evil", "C:/evil", "a\\\\..\\\\evil", "a/\x00evil", "a/../../evil",
                                  "./evil", "a//evil", ""])  # fmt: skip
def test_traversal_and_malformed_paths(tmp_path, honest, path):
    repo, info, tree = honest
    publish(repo, info, raw_tree([entry(tree, path)]))
    assert_refused(tmp_path, repo, r"path .* (is empty|contains a NUL|is absolute|has an empty, '\.' or '\.\.')")


def test_duplicate_and_conflicting_paths(tmp_path, honest):
    repo, info, tree = honest
    publish(repo, info, raw_tree([entry(tree, "a"), entry(tree, "a")]))
    assert_refused(tmp_path, repo, "twice|duplicate|sorted|canonical")
    publish(repo, info, raw_tree([entry(tree, "a"), entry(tree, "a/b")]))
    assert_refused(tmp_path, repo, "both|directory|prefix")


def test_sizes_and_counts_beyond_reason(tmp_path, honest):
    repo, info, tree = honest
    publish(repo, info, raw_tree([entry(tree, "a", size=1 << 50)]))
    assert_refused(tmp_path, repo, "size")
    one = tree.files[0]
    publish(repo, info, raw_tree([entry(tree, "a", chunks=one.chunks + one.chunks)]))
    assert_refused(tmp_path, repo, "add up|chunks|size")


def test_chunk_lists_that_do_not_add_up(tmp_path, honest):
    repo, info, tree = honest
    one = tree.files[0]
    cid, length = next(iter(one.chunk_list()))
    bad = CHUNK_RECORD.pack(cid, length + 1) + one.chunks[CHUNK_RECORD.size :]
    publish(repo, info, raw_tree([entry(tree, "a", chunks=bad)]))
    assert_refused(tmp_path, repo, "add up|chunk|size")


def test_a_ref_naming_a_tree_that_does_not_exist(tmp_path, honest):
    repo, info, _ = honest
    (repo / ref_key("m", "forged")).write_bytes(info._replace(version="forged", root="ab" * 32).encode())
    assert_refused(tmp_path, repo, "not in the repository")


def test_a_locator_pointing_outside_its_pack(tmp_path, honest):
    repo, info, tree = honest
    locations = decode_locator((repo / locator_key(info.root)).read_bytes())
    cid, loc = next(iter(locations.items()))
    locations[cid] = Location(loc.pack_id, loc.offset + (1 << 30), loc.length)
    publish(repo, info, tree.encode() + b"", encode_locator(locations), version="forged")
    assert_refused(tmp_path, repo, "points outside its packs|shorter than the range")


@functools.cache
def _inflating_frame() -> tuple[bytes, int]:
    """A zstd frame of 64 MB of zeros (8 KB), and where its 4-byte declared content size sits."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(64 << 20))
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and descriptor & 3 == 0  # a 4-byte content size, no dictionary id
    return frame, 5 + (0 if descriptor & 0x20 else 1)  # after the window byte, if there is one


def zstd_bomb(claim: int) -> bytes:
    """A cas zstd chunk whose frame declares ``claim`` bytes and expands to 64 MB."""
    frame, at = _inflating_frame()
    return bytes([codec.ZSTD]) + frame[:at] + struct.pack("<I", claim) + frame[at + 4 :]


def test_codec_frames_that_expand_beyond_their_claim(tmp_path, honest):
    """Every chunk is served as a frame that declares the chunk's own size and inflates to 64 MB."""
    repo, info, tree = honest
    pack_id = "ee" * 32
    frames, locations = bytearray(), {}
    for f in tree.files:
        for cid, length in f.chunk_list():
            frame = zstd_bomb(length)
            locations[cid] = Location(pack_id, len(frames), len(frame))
            frames += frame
    (repo / "packs" / pack_id).write_bytes(bytes(frames))
    publish(repo, info, tree.encode(), encode_locator(locations))
    got = pull_in_child(tmp_path / "victim", "m:forged", f"file://{repo}")
    assert "failed verification 4 times; the repository, or something between" in got["error"], got
    assert got["peak_mb"] < 400, got  # 16 frames in flight fully inflated would be a gigabyte
    assert Cache(tmp_path / "victim").list() == []


def test_pack_bytes_that_are_not_what_the_index_says(tmp_path, honest):
    repo, _, _ = honest
    pack = max((p for p in (repo / "packs").iterdir() if "." not in p.name), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    for i in range(0, len(data), 4096):  # damage every chunk in it
        data[i] ^= 0xFF
    pack.write_bytes(bytes(data))
    victim = Cache(tmp_path / "victim")
    with pytest.raises(CasError, match="failed verification 4 times"):
        victim.pull("m:v1", f"file://{repo}")
    assert victim.list() == []
    blobs = victim.root / "blobs"
    assert not blobs.exists() or all(blake3(p.read_bytes()).hexdigest() == p.name.split(".")[0]
                                     for p in blobs.rglob("*") if p.is_file())  # fmt: skip


def test_msgpack_meant_to_exhaust_memory(tmp_path, honest):
    repo, info, _ = honest
    deep = b"\x91" * 100_000 + b"\xc0"  # an array nested 100,000 deep
    huge = b"\xdd\xff\xff\xff\xff"  # an array that claims 4 billion items
    for doc in (deep, huge, msgpack.packb([FORMAT, [[b"x" * 10, 1]]])):
        publish(repo, info, doc)
        assert_refused(tmp_path, repo, "tree|msgpack|malformed")


def test_the_largest_tree_the_format_allows_costs_bounded_memory(tmp_path, honest):
    """A million entries (86 MB) is the most a tree may list: decoding it must not hold two copies of it."""
    repo, info, tree = honest
    one = tree.files[0]
    files = [[f"d{i // 1000:04d}/f{i:07d}", one.size, False, one.file_id, one.chunks] for i in range(A_MILLION)]
    publish(repo, info, raw_tree(files))
    del files
    got = pull_in_child(tmp_path / "victim", "m:forged", f"file://{repo}")
    assert "its ref and its tree disagree on size or file count" in got["error"]
    assert got["peak_mb"] < 650, got  # 483 MB; 855 MB when msgpack's lists and a re-encoding sat beside the entries


def test_a_tree_entry_cannot_claim_to_be_a_symlink(tmp_path, honest):
    """Trees list regular files only: a file type or link target smuggled into an entry is refused."""
    repo, info, tree = honest
    for flag in (0o120777, "symlink", b"/etc/passwd"):
        publish(repo, info, raw_tree([entry(tree, "link", executable=flag)]))
        assert_refused(tmp_path, repo, "executable flag .* is not a boolean")
    publish(repo, info, raw_tree([[*entry(tree, "link"), "/etc/passwd"]]))
    assert_refused(tmp_path, repo, "is not \\[path, size, executable, file_id, chunks\\]")


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_repository_files_that_are_devices_or_pipes_are_refused(tmp_path, honest, kind):
    """A link to /dev/zero where a tree should be must not be read without end, nor a FIFO block the pull."""
    repo, info, _ = honest
    planted = repo / tree_key(info.root)
    planted.unlink()
    if kind == "device":
        planted.symlink_to("/dev/zero")
    else:
        os.mkfifo(planted)
    got = pull_in_child(tmp_path / "victim", "m:v1", f"file://{repo}", timeout=60)
    assert "is not a regular file" in got["error"]
    assert Cache(tmp_path / "victim").list() == []


def test_a_link_planted_where_a_pull_writes_its_part_file_is_not_followed(tmp_path, honest, synthetic):
    repo, info, tree = honest
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    victim = Cache(tmp_path / "victim")
    work = victim.root / "tmp" / "pull" / info.root
    work.mkdir(parents=True)
    for f in tree.files:
        (work / f"{f.file_id.hex()}.part").symlink_to(precious)
        (work / f"{f.file_id.hex()}.part.done").symlink_to(precious)
    victim.pull("m:v1", f"file://{repo}")
    assert precious.read_text() == "keep me"
    assert tree_files(victim.materialize("m:v1")) == tree_files(synthetic)


def test_a_server_answering_with_gigabytes_is_cut_off(tmp_path, synthetic, server, proxy, token):
    url, _ = server
    src = Cache(tmp_path / "src")
    src.add(synthetic, "m:v1")
    src.push("m:v1", url)
    got = pull_in_child(tmp_path / "victim", "m:v1", proxy(url, "bloat"))
    assert "the server sent more than the 268435456 bytes this object may have" in got["error"]
    assert got["peak_mb"] < 700  # the whole answer is 2 GB
    assert Cache(tmp_path / "victim").list() == []
