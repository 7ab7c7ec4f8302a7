"""Push and pull through real repositories: file:// folders and `cas serve` subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest

from cas import Cache, CasError, ModelInfo, NotFound
from cas.content import codec
from tests.support import synth

from .conftest import (
    REPO,
    TOKEN,
    cas_cli,
    free_port,
    missing,
    published,
    start,
    stats,
    stop,
    tree_files,
    verified_chunks,
    wait_until,
)


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """A 24 MB synthetic model, a fine-tune of 10% of its tensors, and the same weights behind a grown header."""
    d = tmp_path_factory.mktemp("variants")
    base = synth.model_tensors(seed=21, total_bytes=24 << 20, layer_bytes=1 << 20)
    tuned = synth.fine_tune(base, 0.10, seed=22)
    out = {
        "base": synth.write_model_dir(d / "base", base),
        "tuned": synth.write_model_dir(d / "tuned", tuned),
        "grown": synth.write_model_dir(d / "grown", base, metadata={"comment": "x" * 500}),
    }
    out["changed_bytes"] = sum(a.nbytes for (_, a), (_, b) in zip(base, tuned) if a.tobytes() != b.tobytes())
    out["tuned_size"] = sum(p.stat().st_size for p in out["tuned"].rglob("*") if p.is_file())
    return out


@pytest.mark.parametrize("dtype", ["F16", "F32"])
def test_a_push_packs_every_chunk_as_small_as_choosing_its_codec_alone(tmp_path, dtype):
    """A push chooses byte planes once for many chunks of a file; chunks start anywhere in a word, and each
    must still be packed as the codec packs it alone (the exponent plane compressed, not a mantissa)."""
    model = synth.write_model_dir(tmp_path / "model", synth.model_tensors(5, 12 << 20, dtype))
    src = Cache(tmp_path / "src")
    src.add(model, "m:v1")
    src.push("m:v1", f"file://{tmp_path / 'repo'}")
    alone = 0
    for f in src.tree("m:v1").files:
        data, offset = (model / f.path).read_bytes(), 0
        for _, length in f.chunk_list():
            alone += len(codec.encode(data[offset : offset + length]))
            offset += length
    packs = sum(p.stat().st_size for p in (tmp_path / "repo" / "packs").iterdir() if p.suffix != ".idx")
    assert packs == alone


def test_round_trip_over_file_repository(tmp_path, minilm):
    repo = f"file://{tmp_path / 'repo'}"
    a, b = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    info = a.add(minilm, "minilm:v1")
    first = a.push("minilm:v1", repo)
    assert first.bytes_uploaded > 0 and first.bytes_uploaded < info.size  # packed and compressed
    again = a.push("minilm:v1", repo)
    assert again.bytes_uploaded == 0 and again.bytes_present == info.size
    got = b.pull("minilm:latest", repo)
    assert got.info.tag == "minilm:v1" and got.info.root == info.root
    assert got.bytes_fetched == first.bytes_uploaded and got.bytes_reused == 0
    assert tree_files(b.materialize("minilm:v1")) == tree_files(minilm)
    assert b.verify().ok
    assert b.pull("minilm:v1", repo).bytes_fetched == 0  # already here


def test_round_trip_over_http_with_the_cli(tmp_path, minilm, server):
    url, repo_dir = server
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    cas_cli("add", str(minilm), "minilm:v1", home=home_a)
    env = {**os.environ, "CAS_TOKEN": TOKEN}
    out = cas_cli("push", "minilm:v1", "--remote", url, home=home_a, env=env).stdout
    assert out.startswith("pushed minilm:v1") and "uploaded" in out
    listed = json.loads(cas_cli("list", "--remote", url, "--json", home=home_b).stdout)
    assert [m["tag"] for m in listed] == ["minilm:v1"]
    out = cas_cli("pull", "minilm", "--remote", url, home=home_b).stdout
    assert out.startswith("pulled minilm:v1") and "reused from local files 0 B" in out
    path = Path(cas_cli("materialize", "minilm:v1", home=home_b).stdout.strip())
    assert tree_files(path) == tree_files(minilm)
    # the served folder is itself a valid file:// repository
    c = Cache(tmp_path / "c")
    c.pull("minilm:v1", f"file://{repo_dir}")
    assert tree_files(c.materialize("minilm:v1")) == tree_files(minilm)


def test_delta_pull_of_a_fine_tune_fetches_little_more_than_the_change(tmp_path, variants, server, token):
    url, _ = server
    src = Cache(tmp_path / "src")
    src.add(variants["base"], "m:base")
    src.add(variants["tuned"], "m:tuned")
    src.push("m:base", url)
    src.push("m:tuned", url)
    host = Cache(tmp_path / "host")
    host.pull("m:base", url)
    delta = host.pull("m:tuned", url)
    size = delta.info.size
    changed = variants["changed_bytes"]
    assert 0.05 * size < changed < 0.15 * size
    assert delta.bytes_fetched <= 0.15 * size
    assert delta.bytes_fetched <= 1.2 * changed
    # raw bytes not copied from local files were fetched: a chunk boundary around each changed tensor costs a little
    assert delta.bytes_reused >= size - 1.5 * changed
    assert tree_files(host.materialize("m:tuned")) == tree_files(variants["tuned"])


def test_a_delta_pull_copies_what_it_reuses_in_the_kernel_in_a_few_long_runs(tmp_path, variants):
    """The reused bytes of a changed file move by copy_file_range, unchanged neighbours as one call, and
    no local blob is read into the process (the file's hash reads what it must from the part file)."""
    if shutil.which("strace") is None:
        missing("strace (apt-get install strace; bash dev test does it as root)")
    repo, host, trace = f"file://{tmp_path / 'repo'}", tmp_path / "host", tmp_path / "pull.trace"
    for tag, model in (("m:base", variants["base"]), ("m:tuned", variants["tuned"])):
        published(tmp_path, model, tag, repo)
    Cache(host).pull("m:base", repo)
    chunks = max(len(list(f.chunk_list())) for f in Cache(host).tree("m:base").files)
    cmd = ["strace", "-f", "-y", "-qq", "-e", "trace=copy_file_range,pread64,read", "-o", str(trace),
           sys.executable, "-m", "cas", "--home", str(host), "pull", "m:tuned", "--remote", repo]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    calls = trace.read_text().splitlines()
    copies = [line for line in calls if "copy_file_range(" in line and "/blobs/" in line]
    copied = sum(int(line.rsplit("= ", 1)[1]) for line in copies)
    assert copied >= variants["tuned_size"] - 1.5 * variants["changed_bytes"]
    assert 0 < len(copies) < chunks / 4  # runs of neighbours, not a call per chunk
    assert not [line for line in calls if "/blobs/" in line and ("pread64(" in line or " read(" in line)]
    assert tree_files(Cache(host).materialize("m:tuned")) == tree_files(variants["tuned"])


def test_a_blob_changed_through_its_hardlink_is_not_copied_into_a_pull(tmp_path, variants):
    """Written through a materialized file (root ignores its read-only mode), a blob no longer holds what
    the chunk index says: the pull that would copy from it assembles that file from the repository."""
    repo = f"file://{tmp_path / 'repo'}"
    for tag, model in (("m:base", variants["base"]), ("m:tuned", variants["tuned"])):
        published(tmp_path, model, tag, repo)
    host = Cache(tmp_path / "host")
    host.pull("m:base", repo)
    weights = host.materialize("m:base") / "model.safetensors"
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:  # the same inode as the blob
        f.seek(weights.stat().st_size // 2)
        f.write(os.urandom(1 << 20))
    host.pull("m:tuned", repo)
    assert tree_files(host.materialize("m:tuned")) == tree_files(variants["tuned"])
    assert not host.verify().ok  # the damaged blob is still there for verify to report and repair


def test_a_grown_header_still_deduplicates(tmp_path, variants):
    repo = f"file://{tmp_path / 'repo'}"
    src = Cache(tmp_path / "src")
    src.add(variants["base"], "m:base")
    src.add(variants["grown"], "m:grown")
    src.push("m:base", repo)
    pushed = src.push("m:grown", repo)
    assert pushed.bytes_uploaded < 0.02 * pushed.info.size  # the repository already had nearly every chunk
    host = Cache(tmp_path / "host")
    host.pull("m:base", repo)
    delta = host.pull("m:grown", repo)
    assert delta.bytes_fetched < 0.02 * delta.info.size
    assert tree_files(host.materialize("m:grown")) == tree_files(variants["grown"])


def test_pushing_other_content_under_an_existing_version_is_refused(tmp_path, variants):
    repo = f"file://{tmp_path / 'repo'}"
    a, b = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    a.add(variants["base"], "m:v1")
    b.add(variants["tuned"], "m:v1")
    a.push("m:v1", repo)
    with pytest.raises(CasError, match="already exists in .* with other content"):
        b.push("m:v1", repo)
    c = Cache(tmp_path / "c")
    assert c.pull("m:v1", repo).info.root == a.get("m:v1").root


def test_pull_of_an_unknown_tag(tmp_path, server):
    url, _ = server
    with pytest.raises(NotFound, match="ghost:v1 is not in the repository"):
        Cache(tmp_path / "c").pull("ghost:v1", url)
    with pytest.raises(NotFound, match="ghost has no version"):
        Cache(tmp_path / "c").pull("ghost", url)


def test_writes_need_the_right_token(tmp_path, synthetic, server, monkeypatch):
    url, repo_dir = server
    cache = Cache(tmp_path / "c")
    cache.add(synthetic, "m:v1")
    monkeypatch.delenv("CAS_TOKEN", raising=False)
    with pytest.raises(CasError, match="401 Unauthorized; set CAS_TOKEN"):
        cache.push("m:v1", url)
    monkeypatch.setenv("CAS_TOKEN", "wrong")
    with pytest.raises(CasError, match="403 Forbidden; check CAS_TOKEN"):
        cache.push("m:v1", url)
    assert not (repo_dir / "packs").exists() or not any((repo_dir / "packs").iterdir())


def http(method: str, url: str, data: bytes | None = None, auth: bool = True) -> int:
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code


def test_server_refuses_keys_outside_the_layout(server):
    url, _ = server
    for key in ("../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "refs/../../x", "trees/abc", "packs/x.idx", "nope"):
        assert http("GET", f"{url}/{key}") in (400, 404), key
        assert http("PUT", f"{url}/{key}", b"x") in (400, 404), key


def test_server_checks_uploads_against_their_names(tmp_path, server, synthetic, token):
    url, repo_dir = server
    bogus = "a" * 64
    assert http("PUT", f"{url}/packs/{bogus}", b"not this") == 400
    assert http("PUT", f"{url}/trees/{bogus}", b"not this") == 400
    # an index for a pack that is not there, then one that lies about its pack
    cache = Cache(tmp_path / "c")
    cache.add(synthetic, "m:v1")
    cache.push("m:v1", url)
    pack_id = next(p.name for p in (repo_dir / "packs").iterdir() if not p.name.endswith(".idx"))
    assert http("PUT", f"{url}/packs/{bogus}.idx", (repo_dir / f"packs/{pack_id}.idx").read_bytes()) == 409
    idx = msgpack.unpackb((repo_dir / f"packs/{pack_id}.idx").read_bytes())
    records = bytearray(idx[2])
    records[0] ^= 1  # first chunk id
    forged = msgpack.packb([idx[0], idx[1], bytes(records)])
    (repo_dir / f"packs/{pack_id}.idx").unlink()
    assert http("PUT", f"{url}/packs/{pack_id}.idx", forged) == 400
    # a ref whose tree is missing
    ref = (repo_dir / "refs/m/v1").read_bytes()
    root = cache.get("m:v1").root
    (repo_dir / f"trees/{root}").unlink()
    assert http("PUT", f"{url}/refs/m/v2", ref) == 400  # names m:v1 inside
    assert http("PUT", f"{url}/refs/m/v1", ref) == 409
    assert http("PUT", f"{url}/trees/{root}", cache.tree("m:v1").encode()) == 201


def test_server_without_token_is_read_only(tmp_path, synthetic):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "CAS_TOKEN"}
    proc = start([sys.executable, "-m", "cas", "serve", str(tmp_path / "r"), "--port", str(port)], url + "/", env)
    try:
        assert http("PUT", f"{url}/trees/{'a' * 64}", b"x") == 403
    finally:
        stop(proc)


def test_reads_can_require_the_token(tmp_path, synthetic, token):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "t").write_text(TOKEN)
    cmd = [sys.executable, "-m", "cas", "serve", str(tmp_path / "r"), "--port", str(port),
           "--token-file", str(tmp_path / "t"), "--read-token"]  # fmt: skip
    proc = start(cmd, url + "/")
    try:
        assert http("GET", url + "/?list=refs/", auth=False) == 401
        src = Cache(tmp_path / "src")
        src.add(synthetic, "m:v1")
        src.push("m:v1", url)
        assert Cache(tmp_path / "host").pull("m:v1", url).info.tag == "m:v1"
    finally:
        stop(proc)


def test_an_interrupted_pull_resumes_with_what_it_verified(tmp_path, minilm, server, proxy, token):
    url, _ = server
    total = published(tmp_path, minilm, "minilm:v1", url).bytes_uploaded
    slow = proxy(url, "none", 1, delay=0.4)
    home = tmp_path / "host"
    code = "import sys; from cas import Cache; Cache(sys.argv[1]).pull('minilm:v1', sys.argv[2], concurrency=2)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(home), slow], cwd=REPO)
    wait_until(lambda: verified_chunks(home) >= 100, what="100 chunks verified")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    host = Cache(home)
    assert host.list() == []  # nothing visible from the interrupted pull
    resumed = host.pull("minilm:v1", url)
    assert 0 < resumed.bytes_fetched < total
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)


SERVICE = """
import descriptor
class Service:
    model = descriptor.Model("minilm:latest")
print(Service().model.path)
"""


def test_offline_mode_never_touches_the_network(tmp_path, synthetic, server, proxy, token):
    """CAS_OFFLINE=1: a descriptor that would pull and every command that would contact a repository fail with
    one line, and the repository sees no request at all (counted at the proxy in front of it)."""
    url, _ = server
    published(tmp_path, synthetic, "minilm:v1", url)
    counting = proxy(url)
    env = {**os.environ, "CAS_HOME": str(tmp_path / "h"), "CAS_REMOTE": counting, "CAS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SERVICE], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "CAS_OFFLINE is set, so it was not pulled" in out.stderr
    for args in (["pull", "minilm:v1"], ["list", "--remote", counting], ["verify", "--remote", counting],
                 ["push", "minilm:v1"]):  # fmt: skip
        cli = cas_cli(*args, home=tmp_path / "src", env=env, check=False)
        assert cli.returncode == 1 and cli.stderr.count("\n") == 1, cli.stderr
        assert "CAS_OFFLINE is set, so the repository" in cli.stderr
    assert stats(counting)["requests"] == 0
    env["CAS_OFFLINE"] = "false"  # read as every flag is: 0, false, no and off are off
    subprocess.run([sys.executable, "-c", SERVICE], cwd=REPO, env=env, check=True, capture_output=True)
    assert stats(counting)["requests"] > 0  # the same service online: the count is real


def test_refresh_falls_back_to_the_local_version_when_the_repository_is_down(tmp_path, synthetic):
    import descriptor

    cache = Cache(tmp_path / "c")
    info = cache.add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:latest", cache=cache, remote=f"http://127.0.0.1:{free_port()}", refresh=True)

    with pytest.warns(UserWarning, match="could not refresh m:latest"):
        assert Service().model.tag == info.tag


def test_refresh_picks_up_a_newer_version(tmp_path, variants):
    import descriptor

    repo = f"file://{tmp_path / 'repo'}"
    publisher = Cache(tmp_path / "pub")
    publisher.add(variants["base"], "m:v1")
    publisher.push("m:v1", repo)
    host = Cache(tmp_path / "host")
    host.pull("m:v1", repo)
    publisher.add(variants["tuned"], "m:v2")
    publisher.push("m:v2", repo)

    class Stale:
        model = descriptor.Model("m:latest", cache=host, remote=repo)

    class Fresh:
        model = descriptor.Model("m:latest", cache=host, remote=repo, refresh=True)

    assert Stale().model.tag == "m:v1"  # the warm path never asks the network
    assert Fresh().model.tag == "m:v2"


@pytest.mark.parametrize("shrink", [1, 4096, None])
def test_a_part_file_of_the_wrong_size_is_assembled_anew_whatever_its_log_says(tmp_path, variants, shrink):
    """An interrupted pull's part file is resumed only if it has the file's size: one cut short or grown (by hand,
    by another tool), whose log claims every chunk, is fetched again and the pull is exact."""
    repo = f"file://{tmp_path / 'repo'}"
    published(tmp_path, variants["base"], "m:v1", repo)
    host = Cache(tmp_path / "host")
    info = host.estimate_pull("m:v1", repo).info
    big = max(Cache(tmp_path / "src").tree("m:v1").files, key=lambda f: f.size)
    work = host.objects.pull_work / info.root
    work.mkdir(parents=True)
    part = work / f"{big.file_id.hex()}.part"
    size = big.size - shrink if shrink else big.size + 1
    part.write_bytes(b"\0" * size)
    offsets, offset = [], 0
    for _, length in big.chunk_list():
        offsets.append(offset)
        offset += length
    Path(str(part) + ".done").write_text("".join(f"{o}\n" for o in offsets))
    stats = host.pull("m:v1", repo)
    assert stats.bytes_fetched == Cache(tmp_path / "clean").pull("m:v1", repo).bytes_fetched  # nothing was kept
    assert tree_files(host.materialize("m:v1")) == tree_files(variants["base"])


@pytest.mark.parametrize("missing", ["trees", "locators"])
def test_server_refuses_a_ref_whose_tree_or_locator_is_not_there(tmp_path, synthetic, server, token, missing):
    """Refs go last: `cas serve` takes a ref only once the tree and the locator it needs are stored, so no reader
    ever meets a ref it cannot pull."""
    url, repo = server
    info = published(tmp_path, synthetic, "m:v1", url).info
    (repo / missing / info.root).unlink()
    record = ModelInfo(info.name, "v2", info.root, info.created, info.size, info.file_count).encode()
    assert http("PUT", f"{url}/refs/m/v2", record) == 409
    assert not (repo / "refs" / "m" / "v2").exists()
    assert http("PUT", f"{url}/refs/m/v2", record, auth=False) == 401


def test_a_one_chunk_file_copied_from_a_changed_local_blob_is_fetched_again(tmp_path):
    """A file of one chunk has that chunk's id as its file id, so a chunk decoded from the repository needs no
    second hash; one copied from a local blob does: here the same bytes are wanted as an executable, the
    non-executable blob holding them was changed through its hardlink, and the pull still lays down the
    repository's bytes."""
    repo = f"file://{tmp_path / 'repo'}"
    script = b"#!/bin/sh\necho " + b"x" * 4000 + b"\n"
    plain, runnable = tmp_path / "plain", tmp_path / "runnable"
    for folder, mode in ((plain, 0o644), (runnable, 0o755)):
        folder.mkdir()
        (folder / "run.sh").write_bytes(script)
        os.chmod(folder / "run.sh", mode)
    for tag, folder in (("m:plain", plain), ("m:exec", runnable)):
        published(tmp_path, folder, tag, repo)
    host = Cache(tmp_path / "host")
    host.pull("m:plain", repo)
    target = host.materialize("m:plain") / "run.sh"
    os.chmod(target, 0o644)
    target.write_bytes(b"#!/bin/sh\necho " + b"y" * 4000 + b"\n")  # same size, through the blob's hardlink
    host.pull("m:exec", repo)
    got = host.materialize("m:exec") / "run.sh"
    assert got.read_bytes() == script and os.access(got, os.X_OK)
