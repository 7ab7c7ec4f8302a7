"""The listings a repository keeps for static servers, and listing answers of servers that can list:
both come from the network, so both are validated as strictly as trees."""

from __future__ import annotations

import json
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cas
from cas import Cache, InvalidInput, InvalidManifest, RepoError
from cas.repo import listing
from cas.repo.http import parse_listing

from .conftest import cas_cli


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
    with pytest.raises(InvalidManifest, match="holds more than 100,000 entries, the most a repository lists"):
        listing.decode_names(huge)


def test_a_million_versions_listed_by_a_hostile_repository_end_in_one_line(tmp_path, nginx):
    """``index/versions/m`` and ``index/names`` with a million entries each, served by nginx and read from the
    folder: ``list --remote``, ``pull m:latest`` and ``verify --remote`` refuse them at the header, in one line
    (they ran for minutes in gigabytes)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w" * 1000)
    folder = tmp_path / "repo"
    cas_cli("add", str(model), "m:v1", home=tmp_path / "c")
    cas_cli("push", "m:v1", "--remote", f"file://{folder}", home=tmp_path / "c")
    million = [f"v{i:07d}" for i in range(1_000_000)]
    (folder / "index" / "versions" / "m").write_bytes(listing.encode_versions(dict.fromkeys(million, 1.0)))
    for url in (f"file://{folder}", nginx(folder)):
        for args in (("list", "--remote", url), ("pull", "m:latest", "--remote", url), ("verify", "--remote", url)):
            proc = cas_cli(*args, home=tmp_path / "h", check=False)
            assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
            assert "a listing of versions holds more than 100,000 entries" in proc.stderr, proc.stderr
    (folder / "index" / "names").write_bytes(listing.encode_names(f"n{i:07d}" for i in range(1_000_000)))
    proc = cas_cli("list", "--remote", f"file://{folder}", home=tmp_path / "h", check=False)
    assert "the listing of names holds more than 100,000 entries" in proc.stderr, proc.stderr


def test_a_push_past_the_listing_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "MAX_ENTRIES", 2)
    model = tmp_path / "model"
    model.mkdir()
    cache = Cache(tmp_path / "c")
    url = f"file://{tmp_path / 'repo'}"
    for v in ("v1", "v2", "v3"):
        (model / "w.bin").write_bytes(v.encode())
        cache.add(model, f"m:{v}")
    cache.push("m:v1", url)
    cache.push("m:v2", url)
    with pytest.raises(InvalidInput, match="the repository lists 2 versions of this name, so 'v3' cannot be added"):
        cache.push("m:v3", url)
    assert [i.tag for i in cas.list_remote(url)] == ["m:v2", "m:v1"]


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


def test_latest_is_the_version_pushed_last_whatever_the_publishers_clocks_say(tmp_path, nginx):
    """A host whose clock runs 3 hours ahead pushes v1, then a host with the right time pushes v2: ``latest`` is
    v2 (the repository orders its versions, one compare-and-set of the listing each), read from the folder
    and through nginx; removing v2 makes v1 latest again."""
    model = tmp_path / "model"
    model.mkdir()
    ahead, right = Cache(tmp_path / "ahead"), Cache(tmp_path / "right")
    url = f"file://{tmp_path / 'repo'}"
    (model / "w.bin").write_bytes(b"one")
    ahead.add(model, "m:v1", created=time.time() + 3 * 3600)
    ahead.push("m:v1", url)
    (model / "w.bin").write_bytes(b"two")
    right.add(model, "m:v2")
    right.push("m:v2", url)
    assert Cache(tmp_path / "h1").pull("m:latest", nginx(tmp_path / "repo")).info.tag == "m:v2"
    out = cas_cli("pull", "m:latest", "--remote", url, home=tmp_path / "h2")
    assert out.stdout.startswith("pulled m:v2 "), out.stdout
    listed = json.loads(cas_cli("list", "--remote", url, "--json", home=tmp_path / "h2").stdout)
    assert [m["tag"] for m in listed] == ["m:v2", "m:v1"]  # newest first, in the order latest follows
    cas.remove_remote(["m:v2"], url)
    assert Cache(tmp_path / "h3").pull("m:latest", url).info.tag == "m:v1"
