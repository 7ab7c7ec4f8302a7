"""Ref records: the warm path's own msgpack reader decodes exactly what msgpack does, and refuses what it refuses."""

from __future__ import annotations

import re
import struct

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cas import Cache, InvalidManifest, ModelInfo
from cas.content import ref, tags

from .conftest import published

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


def msgpack_or_error(data: bytes):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001
        return InvalidManifest


def ours_or_error(data: bytes):
    try:
        return ref._unpack(data)
    except InvalidManifest:
        return InvalidManifest


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_the_ref_reader_decodes_what_msgpack_decodes(value, single_float):
    try:
        data = msgpack.packb(value, use_bin_type=True, use_single_float=single_float)
    except OverflowError:  # a double too large for a single float
        assume(False)
    assert ours_or_error(data) == msgpack_or_error(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_the_ref_reader_refuses_what_msgpack_refuses(data):
    assert ours_or_error(data) == msgpack_or_error(data)


def test_truncated_and_trailing_bytes_and_extension_types_are_msgpacks_to_judge():
    info = ModelInfo("m", "v1", "ab" * 32, 1.5, 10, 1, {"team": "nlp"}, {"epochs": 3, "lr": 0.1})
    data = info.encode(["file:///r"])
    assert ref.decode(data, name="m", version="v1") == info
    assert ref.remotes_of(data) == ["file:///r"]
    for bad in (data[:-1], data + b"\x00", msgpack.packb(msgpack.ExtType(1, b"x"))):
        with pytest.raises(InvalidManifest):
            ref.decode(bad)
    assert ref._unpack(b"\xca" + struct.pack(">f", 0.5)) == 0.5


@given(st.text(alphabet="abcxyz019._-AZ é:/", max_size=8))
def test_tag_parts_are_checked_as_the_regex_did(part):
    ok = re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", part) is not None and len(part) <= tags.MAX_LEN
    try:
        tags.validate_name(part)
        accepted = True
    except tags.InvalidTag:
        accepted = False
    assert accepted == ok


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_a_repository_ref_whose_root_is_not_a_digest_is_refused_before_anything_is_read(tmp_path, length):
    """A forged ref naming a root of the wrong length is refused as a ref, in one line: its hex would otherwise
    name some other key of the layout."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights")
    repo = tmp_path / "repo"
    Cache(tmp_path / "pub").add(src, "m:v1")
    Cache(tmp_path / "pub").push("m:v1", f"file://{repo}")
    path = repo / "refs" / "m" / "v1"
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    doc["root"] = (doc["root"] * 3)[:length]
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(InvalidManifest, match="ref record has a field of the wrong type or out of range"):
        Cache(tmp_path / "host").pull("m:v1", f"file://{repo}")
    assert Cache(tmp_path / "host").list() == []


def test_a_local_ref_whose_remotes_are_not_strings_is_kept_as_stored_here_only(tmp_path):
    """gc evicts only what can come back: a ref record whose remotes field is malformed names no repository,
    so the version counts as stored here only and is never evicted."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights" * 1000)
    cache = Cache(tmp_path / "cache")
    info = cache.add(src, "m:v1")
    path = cache.root / "refs" / "m" / "v1"
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    for remotes in ([1, 2], "file:///elsewhere", [None], {"a": "b"}):
        path.write_bytes(msgpack.packb({**doc, "remotes": remotes}, use_bin_type=True))
        assert cache.refs.remotes(info) == []
        report = cache.gc(1)
        assert report.evicted == [] and [k.tag for k in report.kept] == ["m:v1"]
        assert "stored here only" in report.kept[0].reason


def _forge(tmp_path, change) -> str:
    """m:v1 pushed to a folder, then its ref record rewritten by ``change``: the repository's URL."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights")
    published(tmp_path, src, "m:v1", f"file://{tmp_path / 'repo'}")
    path = tmp_path / "repo" / "refs" / "m" / "v1"
    path.write_bytes(change(msgpack.unpackb(path.read_bytes(), raw=False)))
    return f"file://{tmp_path / 'repo'}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "name": "other"}, "ref record for other:v1 is stored under m:v1"),
        (lambda d: {**d, "version": "v2"}, "ref record for m:v2 is stored under m:v1"),
        (lambda d: {**d, "format": 99}, "ref record has unknown format 99"),
        (lambda d: {**d, "metadata": {"pad": "x" * ref.MAX_REF_BYTES}}, f"bytes, more than {ref.MAX_REF_BYTES}"),
    ],
    ids=["other-name", "other-version", "unknown-format", "oversized"],
)
def test_a_forged_ref_record_is_refused_in_one_line_and_nothing_is_stored(tmp_path, change, message):
    """A repository answers refs/m/v1 with a record for another tag, of a format this cas cannot read, or
    larger than a ref may be: refused as a ref, so a hostile store cannot swap one model in for another."""
    url = _forge(tmp_path, lambda d: msgpack.packb(change(d), use_bin_type=True))
    host = Cache(tmp_path / "host")
    with pytest.raises(InvalidManifest, match=re.escape(message)):
        host.pull("m:v1", url)
    assert host.list() == []
