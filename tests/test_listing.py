"""The listings a repository keeps for static servers, and listing answers of servers that can list:
both come from the network, so both are validated as strictly as trees."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import InvalidManifest, RepoError
from cas.repo import listing
from cas.repo.http import parse_listing


def test_listings_round_trip_and_adding_what_is_there_writes_nothing():
    names = listing.encode_names(["b", "a"])
    assert listing.decode_names(names) == ["a", "b"]
    assert listing.with_name(names, "a") is None
    assert listing.decode_names(listing.with_name(names, "c")) == ["a", "b", "c"]
    versions = listing.with_version(None, "v1", 1.5)
    assert listing.decode_versions(versions) == {"v1": 1.5}
    assert listing.with_version(versions, "v1", 9.0) is None


@pytest.mark.parametrize(
    "doc,said",
    [
        ([1, ["b", "a"]], "not sorted"),
        ([1, ["a", "a"]], "repeats"),
        ([1, ["../x"]], "holds '../x'"),
        ([1, ["Bad"]], "holds 'Bad'"),
        ([2, ["a"]], "not a format-1 listing"),
        ([1, [b"a"]], "not valid msgpack"),
        ({"a": 1}, "not valid msgpack"),
        ([1, [1]], "not a name"),
    ],
)
def test_a_hostile_names_listing_is_refused(doc, said):
    with pytest.raises(InvalidManifest, match=said):
        listing.decode_names(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize(
    "doc,said",
    [
        ([1, [["v2", 1.0], ["v1", 2.0]]], "not sorted"),
        ([1, [["latest", 1.0]]], "holds 'latest'"),
        ([1, [["v1", -1.0]]], "not \\[version, creation time\\]"),
        ([1, [["v1", float("nan")]]], "not \\[version, creation time\\]"),
        ([1, [["v1", True]]], "not \\[version, creation time\\]"),
        ([1, [["v1"]]], "not \\[version, creation time\\]"),
    ],
)
def test_a_hostile_versions_listing_is_refused(doc, said):
    with pytest.raises(InvalidManifest, match=said):
        listing.decode_versions(msgpack.packb(doc, use_bin_type=True))


def test_a_listing_of_more_entries_than_allowed_is_refused_before_it_is_built():
    huge = msgpack.packb([1, ["a"] * (listing.MAX_ENTRIES + 1)], use_bin_type=True)
    with pytest.raises(InvalidManifest, match="not valid msgpack"):
        listing.decode_names(huge)


@pytest.mark.parametrize(
    "body,said",
    [
        (b"\xff\xfe\x00garbage", "with something else"),
        (b"refs/m/v1\n/etc/passwd\n", "is not under refs/"),
        (b"refs/m/../../x\n", "not a key of the repository layout"),
        (b"<html><body>Index of /</body></html>", "with something else"),
    ],
)
def test_a_listing_answer_that_is_not_one_is_refused_in_one_line(body, said):
    with pytest.raises(RepoError, match=said):
        parse_listing(body, "refs/", "http://example")


def test_a_listing_answer_of_layout_keys_is_taken_sorted():
    assert parse_listing(b"refs/m/v2\nrefs/m/v1\n\n", "refs/", "http://x") == ["refs/m/v1", "refs/m/v2"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_as_a_listing_either_decode_or_are_refused_cleanly(data):
    for decode in (listing.decode_names, listing.decode_versions):
        try:
            decode(data)
        except InvalidManifest:
            pass
    try:
        parse_listing(data, "refs/", "http://x")
    except RepoError:
        pass
