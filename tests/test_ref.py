"""Ref records: the warm path's own msgpack reader decodes exactly what msgpack does, and refuses what it refuses."""

from __future__ import annotations

import re
import struct

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cas import InvalidManifest, ModelInfo, ref, tags

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
