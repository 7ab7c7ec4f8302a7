"""`cas serve` under abuse: oversized, unauthenticated, malformed and slow requests are refused one by one,
good requests keep being served, memory does not grow, and the repository still verifies."""

from __future__ import annotations

import http.client
import random
import shutil
import socket
import sys
import urllib.error
import urllib.request

import blake3
import msgpack
import pytest

from cas import Cache, check_repository, list_remote
from cas.repo.format import Location, encode_index, encode_locator
from tests.support.procs import pss_kib

from ..conftest import TOKEN, free_port, published, start, stop, tree_files, wait_until

pytestmark = pytest.mark.reliability


@pytest.fixture
def served(tmp_path, synthetic, monkeypatch):
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    cmd = [sys.executable, "-m", "cas", "serve", str(tmp_path / "repo"), "--port", str(port),
           "--token-file", str(tmp_path / "token")]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proc = start(cmd, url + "/")
    monkeypatch.setenv("CAS_TOKEN", TOKEN)
    published(tmp_path, synthetic, "m:v1", url)
    yield url, port, proc
    stop(proc)


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders(body)
        return conn.getresponse().status
    except (http.client.HTTPException, ConnectionError):
        return 0  # the server closed the connection: refused too
    finally:
        conn.close()


def test_an_oversized_upload_is_refused_before_its_body_is_read(served):
    _, port, _ = served
    status = request(port, "PUT", "/packs/" + "ab" * 32,
                     {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(1 << 40)}, b"x" * 10)  # fmt: skip
    assert status == 413


BAD_PATHS = ["/../etc/passwd", "/refs/../../x", "/%2e%2e/x", "/packs/zz", "/trees/" + "g" * 64, "/refs/a%20b/c",
             "/" + "a" * 10000, "/refs/m/v1/../../x", "/packs/" + "ab" * 32 + ".idx/x", "/%7f%00"]  # fmt: skip


def abuse(port: int, rng: random.Random) -> tuple[str, int, tuple[int, ...]]:
    """One abusive request: (what it was, the status it got, the statuses that refuse it rightly)."""
    kind = rng.randrange(6)
    if kind == 0:
        path = rng.choice(BAD_PATHS)
        return path, request(port, "GET", path), (400, 404)
    if kind == 1:
        value = rng.choice(["bytes=abc", "bytes=9-1", "bytes=-", "x"])
        return f"Range {value}", request(port, "GET", "/refs/m/v1", {"Range": value}), (400, 416)
    if kind == 2:
        method = rng.choice(["DELETE", "POST", "PATCH"])  # DELETE exists (rm --remote, prune) but needs the token
        return method, request(port, method, "/refs/m/v1", body=b""), (401,) if method == "DELETE" else (405,)
    if kind == 3:
        return "PUT, no token", request(port, "PUT", "/refs/m/v2", {"Content-Length": "3"}, b"abc"), (401,)
    if kind == 4:
        headers = {"Authorization": "Bearer wrong", "Content-Length": "3"}
        return "PUT, wrong token", request(port, "PUT", "/refs/m/v2", headers, b"abc"), (403,)
    key = "/trees/" + "cd" * 32  # a tree that does not hash to its name
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Length": "4"}
    return "PUT, wrong hash", request(port, "PUT", key, headers, b"\x92\x01\x90\x90"), (400,)


def test_thousands_of_malformed_requests_are_refused_without_memory_growth(tmp_path, served, synthetic):
    url, port, proc = served
    rng = random.Random(11)
    for _ in range(200):  # warm up allocator and caches
        abuse(port, rng)
    before = pss_kib(proc.pid)
    results = [abuse(port, rng) for _ in range(2000)]
    grown_mb = (pss_kib(proc.pid) - before) / 1024
    wrong = {(what, status) for what, status, right in results if status not in right}
    assert not wrong, f"abusive requests not refused as they should be: {sorted(wrong)[:10]}"
    assert grown_mb < 20, f"the server grew by {grown_mb:.0f} MB"
    host = Cache(tmp_path / "host")
    host.pull("m:v1", url)
    assert tree_files(host.materialize("m:v1")) == tree_files(synthetic)
    assert check_repository(url, deep=True).ok


def test_slow_clients_do_not_stop_good_requests(tmp_path, served, synthetic):
    url, port, proc = served
    before = pss_kib(proc.pid)
    slow = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /refs/m/v1 HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        slow.append(s)
    try:
        body = urllib.request.urlopen(url + "/?list=refs/", timeout=30).read()  # a hang bound, not a timing
        assert b"refs/m/v1" in body
        host = Cache(tmp_path / "host")
        host.pull("m:v1", url)  # a whole pull while the slow clients hold their connections
        assert tree_files(host.materialize("m:v1")) == tree_files(synthetic)
        grown_mb = (pss_kib(proc.pid) - before) / 1024
        assert grown_mb < 20, f"the server grew by {grown_mb:.0f} MB"
    finally:
        for s in slow:
            s.close()
    assert check_repository(url, deep=True).ok


def test_the_access_log_counts_the_body_bytes_of_each_range_answer(tmp_path, synthetic, proxy, monkeypatch):
    """A 206 of a pack range was logged as ~360 bytes (the headers): the log must add up to what was sent, as
    the proxy in front of the server counts it."""
    from cas import Cache

    from ..conftest import TOKEN, free_port, published, start, stats, stop

    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cas", "serve", str(tmp_path / "repo"), "--port", str(port),
           "--token-file", str(tmp_path / "token")]  # fmt: skip
    server = start(cmd, url + "/")
    try:
        monkeypatch.setenv("CAS_TOKEN", TOKEN)
        published(tmp_path, synthetic, "m:v1", url)
        counting = proxy(url)
        Cache(tmp_path / "host").pull("m:v1", counting)
        log = server.log_path.read_text()  # type: ignore[attr-defined]
    finally:
        stop(server)
    ranges = [line.split() for line in log.splitlines() if "/packs/" in line and '" 206 ' in line]
    assert ranges and sum(int(fields[-2]) for fields in ranges) == stats(counting)["pack_bytes"]


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(served):
    """50 clients each sending one byte of a request head a second were all still connected after 60 s."""
    import time

    url, port, _ = served
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    head = b"GET /refs/m/v1 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    closed: set[int] = set()
    deadline = time.monotonic() + 30  # a hang bound: the server's head deadline is 10 s
    for i in range(len(head)):
        if len(closed) == len(slow) or time.monotonic() > deadline:
            break
        for n, s in enumerate(slow):
            if n not in closed:
                try:
                    s.sendall(head[i : i + 1])
                except OSError:
                    closed.add(n)
        time.sleep(1)
    for s in slow:
        s.close()
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow clients still connected"
    assert b"refs/m/v1" in urllib.request.urlopen(url + "/?list=refs/", timeout=30).read()


def test_one_address_holding_too_many_connections_is_answered_503_and_others_still_served(tmp_path, synthetic):
    """A client could open connections until the server ran out of file descriptors: one address now holds at
    most --max-connections-per-client of them; one more is answered 503 (which pulls retry), and is served
    once one of its connections closes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start([sys.executable, "-m", "cas", "serve", str(tmp_path / "repo"), "--port", str(port),
                    "--max-connections-per-client", "8"], url + "/")  # fmt: skip
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/?list=refs/", timeout=30)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
        assert b"too many connections from your address" in refused.value.read()
        assert request(port, "GET", "/?list=refs/") == 503
        held.pop().close()
        wait_until(lambda: request(port, "GET", "/?list=refs/") == 200, timeout=10, what="a freed slot served")
        log = server.log_path.read_text()  # type: ignore[attr-defined]
    finally:
        for s in held:
            s.close()
        stop(server)
    assert log.count("holds 8 connections, the most one address may") == 1, log  # one line per burst


def test_a_listing_prefix_that_climbs_out_of_the_layout_is_refused(served, tmp_path):
    """``?list=`` takes a prefix of the layout's listable folders: one with a ``..`` component, or outside them
    (the whole store, its temporary uploads, the prune marks), is a 400."""
    url, port, _ = served
    (tmp_path / "outside.txt").write_text("not the repository's")
    for prefix in ("refs/../", "refs/../../", "trees/../refs/", "refs/m/../../..", "", ".tmp/", "prune/"):
        assert request(port, "GET", f"/?list={prefix}") == 400, prefix
    assert b"refs/m/v1" in urllib.request.urlopen(url + "/?list=refs/", timeout=30).read()


def test_a_listing_is_never_deleted_and_a_version_never_replaced_by_other_content(served, tmp_path, synthetic):
    """With the token, a client that sends no condition still cannot delete a listing, nor put another root
    under a version that exists: the server refuses (400, 409), and pulls still get the original."""
    url, port, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert request(port, "DELETE", "/index/names", auth) == 400
    assert request(port, "DELETE", "/index/versions/m", auth) == 400
    other = tmp_path / "other"
    shutil.copytree(synthetic, other)  # the session's model stays as it is
    (other / "extra.bin").write_bytes(b"other content")
    published(tmp_path / "second", other, "m:v2", url)
    v1 = urllib.request.urlopen(url + "/refs/m/v1", timeout=30).read()
    v2 = msgpack.unpackb(urllib.request.urlopen(url + "/refs/m/v2", timeout=30).read(), raw=False)
    forged = msgpack.packb({**v2, "version": "v1"}, use_bin_type=True)
    headers = {**auth, "Content-Length": str(len(forged))}
    assert request(port, "PUT", "/refs/m/v1", headers, forged) == 409
    assert urllib.request.urlopen(url + "/refs/m/v1", timeout=30).read() == v1
    host = Cache(tmp_path / "host")
    host.pull("m:v1", url)
    assert tree_files(host.materialize("m:v1")) == tree_files(synthetic)
    assert sorted(i.tag for i in list_remote(url)) == ["m:v1", "m:v2"]


def test_uploads_that_would_leave_the_repository_inconsistent_are_refused(served, tmp_path, synthetic):
    """What a buggy or hostile writer with the token may send, each refused with nothing stored: a locator
    pointing into a pack that has no index, a pack index declaring another size than its pack, and a listing
    written over a version of it that is no longer there (lost updates)."""
    url, port, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def put(key: str, body: bytes, **headers: str) -> int:
        return request(port, "PUT", f"/{key}", {**auth, "Content-Length": str(len(body)), **headers}, body)

    model = tmp_path / "other"
    model.mkdir()
    (model / "w.bin").write_bytes(b"other weights" * 100)
    info = Cache(tmp_path / "other-cache").add(model, "o:v1")
    tree = (tmp_path / "other-cache" / "trees" / info.root[:2] / info.root).read_bytes()
    assert put(f"trees/{info.root}", tree) == 201
    orphan = "ab" * 32
    locator = encode_locator({b"\1" * 32: Location(orphan, 0, 10)})
    assert put(f"locators/{info.root}", locator) == 409
    pack = b"not really a pack, but named for its hash"
    pack_id = blake3.blake3(pack).hexdigest()
    assert put(f"packs/{pack_id}", pack) == 201
    assert put(f"packs/{pack_id}.idx", encode_index(len(pack) + 1, [])) == 400
    names = urllib.request.urlopen(url + "/index/names", timeout=30)
    body, etag = names.read(), names.headers["ETag"]
    assert put("index/names", body, **{"If-Match": '"' + "0" * 64 + '"'}) == 412
    assert put("index/names", body, **{"If-Match": etag}) == 200
    for key in (f"locators/{info.root}", f"packs/{pack_id}.idx"):
        assert request(port, "GET", f"/{key}") == 404, key
    assert check_repository(url, deep=True).ok
