"""cas du, cas gc and the size budget: what goes, what stays and why, on real caches and real processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache
from cas.errors import InvalidInput
from cas.local.gc import HERE_ONLY
from cas.local.space import parse_size

from .conftest import REPO, cas_cli, tree_files

MB = 1_000_000


def _model(path: Path, seed: int, size: int = MB) -> Path:
    """A model of one random weights file and a config shared by every model of these tests."""
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(os.urandom(size) if seed < 0 else _random(seed, size))
    (path / "config.json").write_text('{"shared": true}\n' * 4000)
    return path


def _random(seed: int, size: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


@pytest.fixture
def repo(tmp_path: Path) -> str:
    """A file:// repository holding m1:v1, m2:v1 and m3:v1 (1 MB each, one config file shared)."""
    url = f"file://{tmp_path / 'repo'}"
    src = Cache(tmp_path / "src")
    for i in (1, 2, 3):
        src.add(_model(tmp_path / f"m{i}", seed=i), f"m{i}:v1")
        src.push(f"m{i}:v1", url)
    return url


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its inode and size: what a dry run must leave as it was."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_ino, st.st_size)
    return out


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


HOLD = """
import sys, descriptor
from cas import Cache
class Service:
    model = descriptor.Model(sys.argv[2], cache=Cache(sys.argv[1]))
print(Service().model.path, flush=True)
sys.stdin.read()  # holds the model until the test closes stdin
"""


def _use(home: Path, tag: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A service process that resolved ``tag`` through a descriptor and keeps using it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(home), tag], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)  # fmt: skip
    assert Path(proc.stdout.readline().strip()).is_dir()
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


# -- leftovers --------------------------------------------------------------


def test_gc_removes_what_no_ref_needs_and_a_dry_run_changes_nothing(tmp_path, repo):
    home = tmp_path / "home"
    cache = Cache(home)
    cache.pull("m1:v1", repo)
    cache.pull("m2:v1", repo)
    snapshot = cache.materialize("m1:v1")
    m2_blob = bytes.fromhex(next(f.file_id.hex() for f in cache.tree("m2:v1").files if f.path == "weights.bin"))
    cache.refs.remove("m2", ["v1"])  # a ref gone without its objects: what a crash in a removal leaves
    dead = _dead_pid()
    leftovers = [
        home / "tmp" / f"blob-{dead}-1-1-abcdef",
        home / "tmp" / "pull" / f"{'ab' * 32}.part",
        home / "snapshots" / f".tmp-{dead}-1-1-abcdef" / "weights.bin",
        home / "snapshots" / ("cd" * 32) / "weights.bin",
    ]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(50_000))
    before = _files(home)

    dry = json.loads(cas_cli("gc", "--dry-run", "--json", home=home).stdout)
    assert _files(home) == before
    assert dry["dry_run"] and dry["freed"] >= MB + 4 * 50_000

    done = json.loads(cas_cli("gc", "--json", home=home).stdout)
    assert sorted(done["removed"]) == sorted(dry["removed"])
    assert done["freed"] >= MB + 4 * 50_000  # what it removed; the measured sizes also count gc's own record
    assert done["size_before"] - done["size_after"] >= MB + 4 * 50_000
    for p in leftovers:
        assert not p.exists()
    assert not (home / "tmp" / "pull").exists()
    assert [b.name for b in (home / "blobs").rglob("*") if b.is_file() and b.name.startswith(m2_blob.hex())] == []
    assert tree_files(snapshot) == tree_files(tmp_path / "m1")
    rows = sqlite3.connect(home / "chunks.sqlite").execute("SELECT count(*) FROM chunks WHERE file = ?", (m2_blob,))
    assert rows.fetchone()[0] == 0
    assert cache.verify().ok and [i.tag for i in cache.list()] == ["m1:v1"]


def test_verify_keeps_the_parts_of_an_interrupted_pull_and_gc_frees_them(tmp_path):
    home = tmp_path / "home"
    part = home / "tmp" / "pull" / f"{'ab' * 32}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"verified chunks of a pull that was interrupted")
    assert Cache(home).verify().ok
    assert part.exists()  # the next pull resumes from it
    report = Cache(home).gc()
    assert not part.exists() and report.freed > 0


# -- the budget ---------------------------------------------------------------


def test_a_budget_evicts_the_least_recently_used_pulled_versions_and_they_come_back(tmp_path, repo):
    home = tmp_path / "home"
    cache = Cache(home)
    for tag in ("m1:v1", "m2:v1", "m3:v1"):
        cache.pull(tag, repo)
    cache.add(_model(tmp_path / "mine", seed=9), "mine:v1")
    _release(_use(home, "m1:v1"))  # m1 used after m3 was pulled: m2 and m3 are the least recently used
    total = cache.du().total

    report = json.loads(cas_cli("gc", "--max-size", str(total - int(1.5 * MB)), "--json", home=home).stdout)

    assert report["evicted"] == ["m2:v1", "m3:v1"]
    assert not report["over_budget"] and report["size_after"] <= total - 1.5 * MB
    assert sorted(i.tag for i in cache.list()) == ["m1:v1", "mine:v1"]
    assert cache.verify().ok
    assert tree_files(cache.materialize("m1:v1")) == tree_files(tmp_path / "m1")
    cas_cli("pull", "m2:v1", "--remote", repo, home=home)  # it can come back: that is why it could go
    assert tree_files(cache.materialize("m2:v1")) == tree_files(tmp_path / "m2")


def test_versions_in_use_or_stored_here_only_stay_and_the_report_says_why(tmp_path, repo):
    home = tmp_path / "home"
    cache = Cache(home)
    for tag in ("m1:v1", "m2:v1"):
        cache.pull(tag, repo)
    cache.add(_model(tmp_path / "mine", seed=9), "mine:v1")
    service = _use(home, "m1:v1")
    try:
        report = json.loads(cas_cli("gc", "--max-size", "0", "--json", home=home).stdout)
        assert report["over_budget"] and report["evicted"] == ["m2:v1"]
        reasons = {k["tag"]: k["reason"] for k in report["kept"]}
        assert reasons["m1:v1"] == "in use by a running process"
        assert reasons["mine:v1"].startswith("stored here only: push it to a repository")
        text = cas_cli("gc", "--max-size", "0", home=home).stdout
        assert "still over the budget of 0 B; kept:" in text and "m1:v1: in use by a running process" in text
    finally:
        _release(service)
    assert cache.gc(0).kept == [("mine:v1", HERE_ONLY.format(tag="mine:v1"))]
    assert sorted(i.tag for i in cache.list()) == ["mine:v1"]
    assert cache.verify().ok


def test_this_process_keeps_the_models_it_uses(tmp_path, repo):
    import descriptor

    cache = Cache(tmp_path / "home")
    cache.pull("m1:v1", repo)
    cache.pull("m2:v1", repo)
    used = descriptor.Model("m1:v1", cache=cache).resolve()
    report = cache.gc(0)
    assert [i.tag for i in report.evicted] == ["m2:v1"]
    assert [(k.tag, k.reason) for k in report.kept] == [("m1:v1", "in use by a running process")]
    assert tree_files(used.path) == tree_files(tmp_path / "m1")


def test_a_pushed_version_can_come_back_so_gc_may_evict_it(tmp_path, repo):
    home = tmp_path / "home"
    cache = Cache(home)
    cache.add(_model(tmp_path / "mine", seed=9), "mine:v1")
    assert cache.gc(0).evicted == []
    cas_cli("push", "mine:v1", "--remote", repo, home=home)
    assert [i.tag for i in cache.gc(0).evicted] == ["mine:v1"]
    cache.pull("mine:v1", repo)
    assert tree_files(cache.materialize("mine:v1")) == tree_files(tmp_path / "mine")


def test_cas_max_size_is_applied_after_each_pull_keeping_what_was_pulled(tmp_path, repo):
    home = tmp_path / "home"
    env = {**os.environ, "CAS_MAX_SIZE": "1.5M"}
    assert json.loads(cas_cli("pull", "m1:v1", "--remote", repo, "--json", home=home, env=env).stdout)["evicted"] == []
    out = cas_cli("pull", "m2:v1", "--remote", repo, home=home, env=env).stdout
    assert [i.tag for i in Cache(home).list()] == ["m2:v1"]
    assert out.splitlines()[1] == "evicted m1:v1 to keep the cache to its size budget"  # said, not silent
    stats = Cache(home, max_size="1.5M").pull("m1:v1", repo)
    assert stats.evicted == ("m2:v1",) and [i.tag for i in Cache(home).list()] == ["m1:v1"]
    # The descriptor's pull fits the budget too; a budget smaller than the model keeps the model, and says so.
    env = {**env, "CAS_MAX_SIZE": "1", "CAS_REMOTE": repo}
    service = subprocess.Popen([sys.executable, "-c", HOLD, str(home), "m3:v1"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=env)  # fmt: skip
    path = Path(service.stdout.readline().strip())
    service.stdin.close()
    assert service.wait(timeout=60) == 0
    assert tree_files(path) == tree_files(tmp_path / "m3")
    assert [i.tag for i in Cache(home).list()] == ["m3:v1"]
    assert "over its budget of 1 B (m3:v1: asked to keep it (just pulled))" in service.stderr.read()
    cas_cli("rm", "m3:v1", home=home)
    out = cas_cli("pull", "m3:v1", "--remote", repo, home=home, env=env)
    assert out.stderr.startswith("cas: warning: the cache at ") and "over its budget of 1 B (m3:v1: asked" in out.stderr


def test_a_budget_that_is_not_a_size_is_one_clear_line(tmp_path):
    out = cas_cli("gc", "--max-size", "lots", home=tmp_path / "home", check=False)
    assert out.returncode == 1
    expected = ("cas: error: max_size 'lots' is not a size: give bytes, or a number with K, M, G or T (powers of "
                "1000; KiB, MiB, GiB, TiB for powers of 1024), such as 20G")  # fmt: skip
    assert out.stderr.strip() == expected
    with pytest.raises(InvalidInput, match="CAS_MAX_SIZE '-1' is not a size"):
        os.environ["CAS_MAX_SIZE"] = "-1"
        try:
            Cache(tmp_path / "home").max_size
        finally:
            del os.environ["CAS_MAX_SIZE"]


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1500", 1500), ("20G", 20 * 10**9), ("20gb", 20 * 10**9), ("1.5TiB", int(1.5 * 2**40)),
     ("500 MiB", 500 * 2**20), ("7k", 7000), (123, 123)],
)  # fmt: skip
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


# -- du -------------------------------------------------------------------------


def test_du_shows_what_each_version_holds_alone_and_the_saving(tmp_path, repo):
    home = tmp_path / "home"
    cache = Cache(home)
    cache.pull("m1:v1", repo)
    cache.pull("m2:v1", repo)
    cache.add(tmp_path / "m1", "copy:v1")  # the same files as m1: dedup stores them once
    cache.materialize("m1:v1")
    report = json.loads(cas_cli("du", "--json", home=home).stdout)
    rows = {v["tag"]: v for v in report["versions"]}
    config = os.stat(_blob(cache, "m1:v1", "config.json")).st_blocks * 512
    weights = os.stat(_blob(cache, "m2:v1", "weights.bin")).st_blocks * 512
    assert rows["m2:v1"]["unique"] == weights and rows["m2:v1"]["shared"] == config
    assert rows["m1:v1"]["unique"] == 0 and rows["copy:v1"]["unique"] == 0  # each also held by the other
    assert rows["m1:v1"]["remotes"] == [repo] and rows["copy:v1"]["remotes"] == []
    assert report["logical"] == 3 * (MB + 68_000)
    assert report["stored"] == config + weights + os.stat(_blob(cache, "m1:v1", "weights.bin")).st_blocks * 512
    assert report["saving"] == report["logical"] - report["stored"] and report["snapshots"] == 1
    du = subprocess.run(["du", "-sB1", str(home)], capture_output=True, text=True, check=True)
    assert report["total"] == int(du.stdout.split()[0])
    text = cas_cli("du", "m2", home=home).stdout
    assert text.splitlines()[1].split()[0] == "m2:v1" and "1 versions:" in text


def _blob(cache: Cache, tag: str, path: str) -> Path:
    return next(cache.objects.blob_of(f) for f in cache.tree(tag).files if f.path == path)


# -- pull --dry-run -------------------------------------------------------------


def test_pull_dry_run_says_what_a_pull_would_fetch_and_fetches_nothing(tmp_path, repo, server, proxy, token):
    from .conftest import stats

    url, _ = server
    src = Cache(tmp_path / "src")
    base = tmp_path / "m1"
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "config.json").write_bytes((base / "config.json").read_bytes())
    weights = bytearray((base / "weights.bin").read_bytes())
    weights[-100_000:] = os.urandom(100_000)  # a fine-tune of the tail: most chunks are m1's
    (changed / "weights.bin").write_bytes(weights)
    src.add(changed, "m1:v2")
    src.push("m1:v2", url)
    home = tmp_path / "home"
    Cache(home).pull("m1:v1", repo)
    counting = proxy(url)

    estimate = json.loads(cas_cli("pull", "m1:v2", "--remote", counting, "--dry-run", "--json", home=home).stdout)
    assert stats(counting)["pack_requests"] == 0
    assert [i.tag for i in Cache(home).list()] == ["m1:v1"]
    assert estimate["bytes_present"] == 68_000 and 0 < estimate["bytes_reused"] < MB

    pulled = json.loads(cas_cli("pull", "m1:v2", "--remote", counting, "--json", home=home).stdout)
    assert pulled["bytes_transferred"] == estimate["bytes_to_fetch"] == stats(counting)["pack_bytes"]
    assert pulled["bytes_reused"] == estimate["bytes_reused"]
    assert stats(counting)["pack_requests"] == estimate["requests"]


def test_a_budget_below_the_cache_s_own_files_says_what_stays(tmp_path, repo):
    """Every model evicted, the chunk index and lock files remain: the report names them, never "over budget"
    with nothing kept."""
    cache = Cache(tmp_path / "host")
    cache.pull("m1:v1", repo)
    report = cache.gc(0)
    assert [i.tag for i in report.evicted] == ["m1:v1"] and report.over_budget
    assert [k.tag for k in report.kept] == ["(the cache itself)"] and "a smaller budget cannot be met" in (
        report.kept[0].reason
    )
