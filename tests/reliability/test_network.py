"""A faulty network between a pull and `cas serve` (through tests/faultproxy.py): transient faults are retried
and the pull succeeds; permanent ones end in a clear error within a bounded time; no corrupt byte reaches a blob."""

from __future__ import annotations

import os
import time

import pytest

from cas import Cache, CasError, CorruptObject

from ..conftest import blobs_of, published, pull_in_child, stats, tree_files

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize(
    "fault,every,limit", [("500", 2, 4), ("drop", 2, 4), ("truncate", 2, 4), ("flip", 3, 2), ("norange", 1, 0)]
)
def test_transient_faults_are_survived(tmp_path, minilm, server, proxy, token, fault, every, limit):
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    faulty = proxy(url, fault, every, limit=limit)
    host = Cache(tmp_path / "host")
    host.pull("minilm:v1", faulty)
    assert stats(faulty)["faults"] > 0
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)
    assert host.verify().ok


def test_a_server_ignoring_range_is_read_only_as_far_as_each_range(tmp_path, minilm, server, proxy, token):
    """Each answer is a whole pack (tens of MB) for a 4 MB range: the pull stops reading at the range's end."""
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    env = {**os.environ, "CAS_PULL_PROCESSES": "0", "CAS_DURABLE": "0"}
    honest = pull_in_child(tmp_path / "a", "minilm:v1", proxy(url), env)
    ignoring = proxy(url, "norange", 1)
    got = pull_in_child(tmp_path / "b", "minilm:v1", ignoring, env)
    assert honest["error"] is None and got["error"] is None and stats(ignoring)["faults"] > 0
    assert got["peak_mb"] < honest["peak_mb"] + 100, (got, honest)  # reading whole packs: about 500 MB more
    assert tree_files(Cache(tmp_path / "b").materialize("minilm:v1")) == tree_files(minilm)


def test_a_stalled_read_is_retried(tmp_path, synthetic, server, proxy, token, monkeypatch):
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    monkeypatch.setenv("CAS_STALL_TIMEOUT", "1")
    stalling = proxy(url, "stall", 1, limit=1)
    host = Cache(tmp_path / "host")
    host.pull("m:v1", stalling)
    assert stats(stalling)["faults"] == 1
    assert tree_files(host.materialize("m:v1")) == tree_files(synthetic)


PERMANENT = {  # fault: the end of the message that must name it
    "500": r"last: 500 Internal Server Error",
    "drop": r"last: the server closed the connection without an answer",
    "reset": r"last: the connection was reset",
    "truncate": r"last: the server closed the connection before the end of the body",
    "stall": r"last: no data for 1 s \(CAS_STALL_TIMEOUT\)",
    "silent": r"last: no data for 1 s \(CAS_STALL_TIMEOUT\)",
}


@pytest.mark.parametrize("fault", PERMANENT)
def test_a_server_that_keeps_failing_ends_in_a_clear_error(tmp_path, synthetic, server, proxy, token, monkeypatch,
                                                           fault):  # fmt: skip
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    monkeypatch.setenv("CAS_STALL_TIMEOUT", "1")
    host = Cache(tmp_path / "host")
    start = time.monotonic()
    with pytest.raises(CasError, match=rf"GET .*/packs/\w+ failed 5 times, {PERMANENT[fault]}"):
        host.pull("m:v1", proxy(url, fault, 1))
    assert time.monotonic() - start < 60  # a hang bound, not a timing: five tries, backoff and 1 s stalls
    assert host.list() == [] and blobs_of(host) == []


@pytest.mark.parametrize("processes", ["0", "2"])  # decoded here, or in worker processes across a pipe
def test_permanent_corruption_stops_the_pull_and_stores_nothing(tmp_path, synthetic, server, proxy, token,
                                                                 monkeypatch, processes):  # fmt: skip
    url, _ = server
    monkeypatch.setenv("CAS_PULL_PROCESSES", processes)
    published(tmp_path, synthetic, "m:v1", url)
    host = Cache(tmp_path / "host")
    with pytest.raises(CorruptObject, match="m:v1: chunk .* from pack .* failed verification 4 times"):
        host.pull("m:v1", proxy(url, "flip", 1))
    assert host.list() == []
    assert blobs_of(host) == []
