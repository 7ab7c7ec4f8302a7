"""Prune racing pushes, pulls and removals on one repository, and prune killed at seeded points.

What holds (``cas/sync/prune.py`` explains why):

- With a grace period longer than any push or pull (here 3 s against pushes and pulls of well under a
  second), prune runs over and over, deleting, while other processes push new versions sharing chunks with
  removed ones, remove versions and pull them: every pull of a ref that exists when it starts returns the
  model byte for byte, every push succeeds, and the repository verifies deep.
- With ``--grace 0`` (deliberately harsh: the second run deletes what the first marked) and no repacking:
  every pull of a ref nobody removes returns the model byte for byte; a pull of a ref removed while it runs
  returns the model byte for byte or fails with a CasError, never with wrong bytes.  Pushes are not safe
  against ``--grace 0`` (nothing protects a push that spans two runs), so none runs here.
- SIGKILL of a prune at any point: every ref left is whole, and the next runs complete and leave a repository
  that verifies deep with no orphan.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache, check_repository, list_remote, prune_remote, remove_remote
from tests.support import synth

from ..conftest import KILLS, READY, REPO, start_together, stats, tree_files, wait_until
from .test_crashes import Window, kill_point, span, wait_for_point

pytestmark = pytest.mark.reliability
TRIALS = int(os.environ.get("CAS_RELIABILITY_TRIALS", "2"))
TAGS = [f"m:v{i}" for i in range(1, 7)]

PRUNER = f"""
import json, sys, time
from cas.sync.prune import prune
url, seconds, grace, max_unused = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
{READY}
runs, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    r = prune(url, grace=grace, max_unused=max_unused)
    runs.append([r.marked.count, r.deleted.count, r.repacked.count])
    time.sleep(0.1)
print(json.dumps(runs))
"""
PULLER = f"""
import hashlib, json, sys, time
from pathlib import Path
from cas import Cache, CasError
url, work, seconds, tags = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
{READY}
out, end, i = [], time.monotonic() + seconds, 0
while time.monotonic() < end:
    for tag in tags:
        i += 1
        cache, start = Cache(work / f"c{{i}}", durable=False), time.monotonic()
        try:
            cache.pull(tag, url)
            path = cache.materialize(tag)
            out.append({{"tag": tag, "span": [start, time.monotonic()],
                        "files": {{str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
                                  for p in path.rglob("*") if p.is_file()}}}})
        except CasError as e:
            out.append({{"tag": tag, "error": str(e)}})
print(json.dumps(out))
"""
PUSHER = f"""
import json, sys
from cas import Cache
cache, url = Cache(sys.argv[1]), sys.argv[2]
{READY}
print(json.dumps([cache.push(tag, url).info.tag for tag in sys.argv[3:]]))
"""
REMOVER = f"""
import json, sys, time
from cas import remove_remote
url, pause = sys.argv[1], float(sys.argv[2])
{READY}
removed = {{}}
for tag in sys.argv[3:]:
    time.sleep(pause)
    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable with the pullers' spans
    remove_remote([tag], url)
    removed[tag] = [start, time.monotonic()]
print(json.dumps(removed))
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cache, dict[str, dict[str, str]]]:
    """Six versions of one model, each 8 MB with a quarter of its tensors changed from a shared base: a cache
    holding them, and each one's files by path with their sha256."""
    d = tmp_path_factory.mktemp("prune-races")
    base = synth.model_tensors(31, 8 << 20, layer_bytes=512 << 10)
    cache = Cache(d / "cache", durable=False)
    want = {}
    for i, tag in enumerate(TAGS):
        path = synth.write_model_dir(d / tag.replace(":", "-"), synth.fine_tune(base, 0.25, seed=40 + i))
        cache.add(path, tag)
        want[tag] = {name: hashlib.sha256(data).hexdigest() for name, data in tree_files(path).items()}
    return cache, want


def outputs(procs: list[subprocess.Popen]) -> list:
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"a racer failed: {out[-2000:]}"
        results.append(json.loads(out))
    return results


def assert_settles(url: str, tmp_path: Path, versions) -> None:
    """The repository verifies deep, every ref left pulls byte for byte, and two pruning runs then leave no
    orphan behind."""
    _, want = versions
    report = check_repository(url, deep=True)
    assert report.ok, report.problems
    prune_remote(url, grace=0)
    prune_remote(url, grace=0)
    report = check_repository(url, deep=True)
    assert report.ok and report.orphans == [], report
    host = Cache(tmp_path / "final", durable=False)
    for info in list_remote(url):
        host.pull(info.tag, url)
        files = tree_files(host.materialize(info.tag))
        assert {n: hashlib.sha256(d).hexdigest() for n, d in files.items()} == want[info.tag]


def check_pulls(pulls: list[dict], want: dict[str, dict[str, str]], kept: set[str]) -> int:
    """Every pull returned its model byte for byte, or (of a ref removed meanwhile) failed with a CasError;
    a pull of a kept ref never failed.  Returns the number of pulls that completed."""
    done = 0
    for p in pulls:
        if "files" in p:
            assert p["files"] == want[p["tag"]], p["tag"]
            done += 1
        else:
            assert p["tag"] not in kept, p
    return done


OVERLAPS: list[bool] = []  # per trial: whether a pull that completed was running when its ref was removed


@pytest.fixture(scope="module", autouse=True)
def some_pulls_overlapped_a_removal():
    """The trials must include pulls running across the removal of their ref, or they test only ordering."""
    yield
    if OVERLAPS:
        assert any(OVERLAPS), f"no completed pull ran across the removal of its ref in {len(OVERLAPS)} trials"


@pytest.fixture(params=["cas serve", "s3"])
def shared(request) -> str:
    """The repository the racers share: cas serve with its token, or an S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3")
    request.getfixturevalue("token")
    return request.getfixturevalue("server")[0]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_prune_with_a_grace_period_racing_pushes_pulls_and_removals(tmp_path, shared, versions, trial):
    """Pulls of a ref that exists when they start succeed, even if it is removed meanwhile; pushes reusing
    removed versions' chunks succeed; prune deletes along the way."""
    url = shared
    cache, want = versions
    for tag in TAGS[:3]:
        cache.push(tag, url)
    remove_remote(["m:v1"], url)
    seconds = "10"
    procs = start_together([
        [sys.executable, "-c", PRUNER, url, seconds, "3", "0.1"],
        [sys.executable, "-c", REMOVER, url, "2.5", "m:v2", "m:v3"],
        [sys.executable, "-c", PUSHER, str(cache.root), url, *TAGS[3:]],
        *([sys.executable, "-c", PULLER, url, str(tmp_path / f"p{i}"), seconds, "m:v2", "m:v3"] for i in range(2)),
    ])  # fmt: skip
    runs, removed, pushed, *pulls = outputs(procs)
    assert pushed == TAGS[3:] and list(removed) == ["m:v2", "m:v3"]
    for found in pulls:
        for p in found:  # the only errors allowed: the ref was gone when the pull started
            assert "files" in p or p["error"].startswith(f"model {p['tag']} is not in the repository"), p
        assert check_pulls(found, want, set()) > 0
    OVERLAPS.append(any(p["span"][0] < removed[p["tag"]][1] and removed[p["tag"]][0] < p["span"][1]
                        for found in pulls for p in found if "files" in p))  # fmt: skip
    assert sum(r[1] for r in runs) > 0, f"no prune run deleted anything: {runs}"
    assert {i.tag for i in list_remote(url)} == set(TAGS[3:])
    assert_settles(url, tmp_path, versions)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_prune_with_no_grace_racing_pulls_and_removals(tmp_path, server, token, versions, trial):
    """``--grace 0``, no repacking: pulls of refs nobody removes always succeed; pulls of removed refs give the
    model whole or a CasError."""
    url, _ = server
    cache, want = versions
    for tag in TAGS[:4]:
        cache.push(tag, url)
    seconds = "6"
    procs = start_together([
        [sys.executable, "-c", PRUNER, url, seconds, "0", "1.0"],
        [sys.executable, "-c", REMOVER, url, "1.0", "m:v1", "m:v2"],
        *([sys.executable, "-c", PULLER, url, str(tmp_path / f"p{i}"), seconds, *TAGS[:4]] for i in range(2)),
    ])  # fmt: skip
    runs, _, *pulls = outputs(procs)
    for found in pulls:
        assert check_pulls(found, want, {"m:v3", "m:v4"}) > 0
    assert sum(r[1] for r in runs) > 0, f"no prune run deleted anything: {runs}"
    assert_settles(url, tmp_path, versions)


KILLED = """
import sys
import cas.sync.prune, cas.repo.file  # imported before "ready": the kill's delay counts from the work
print("ready", flush=True)
cas.sync.prune.prune(sys.argv[1], grace=0)
"""


@pytest.fixture(scope="module")
def prune_window(tmp_path_factory: pytest.TempPathFactory, versions) -> Window:
    """What a deleting, repacking run does here, measured on a run left alone: the window kills aim at (by its
    bytes where it moves enough: aimed at seconds, kills missed when the trials ran faster than this run)."""
    url = prepared(tmp_path_factory.mktemp("prune-span") / "repo", versions)
    return span([sys.executable, "-c", KILLED, url], dict(os.environ))


def prepared(folder: Path, versions) -> str:
    """A repository where the next prune deletes three removed versions' objects and repacks packs."""
    cache, _ = versions
    url = f"file://{folder}"
    for tag in TAGS:
        cache.push(tag, url)
    remove_remote(TAGS[:3], url)
    prune_remote(url, grace=1e9, max_unused=1.0)  # marks only
    return url


def killable(url: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", KILLED, url], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    return proc


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_prune_midway(tmp_path, versions, prune_window, trial):
    url = prepared(tmp_path / "repo", versions)
    proc = killable(url)
    KILLS.setdefault("prune", []).append(wait_for_point(proc, prune_window, kill_point(trial)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    report = check_repository(url)  # nothing half-visible: every ref left is whole
    assert report.ok and report.refs == 3, report.problems
    assert_settles(url, tmp_path, versions)


@pytest.fixture(scope="module", autouse=True)
def kills_landed():
    """Kills that all came after prune had finished would test nothing: at least half must land."""
    yield
    hits = KILLS.get("prune", [])
    assert sum(hits) * 2 >= len(hits), f"only {sum(hits)} of {len(hits)} kills of prune landed while it ran"


def test_a_deep_check_beside_a_prune_that_repacks_and_deletes_reports_nothing_wrong(tmp_path, server, token, proxy,
                                                                                       versions):  # fmt: skip
    """A check lists refs and packs first and reads them for a while; a prune meanwhile repacks the chunks of a
    ref it reads later into a pack the listing predates, and deletes a removed ref's tree and pack.  Neither is
    damage: a ref found wrong is looked at again (the soak's check reported a "missing pack" this way)."""
    cache, _ = versions
    url, _ = server
    for tag in TAGS[:2]:
        cache.push(tag, url)
    slow = proxy(url, delay=4.0)  # each pack read of the deep check waits 4 s
    check = subprocess.Popen([sys.executable, "-m", "cas", "verify", "--remote", slow, "--deep", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    wait_until(lambda: stats(slow)["pack_requests"] >= 1, 60, "the check to read its first pack")
    remove_remote(["m:v1"], url)
    assert prune_remote(url).repacked.count == 1  # v2's chunks leave v1's pack for a new one
    assert prune_remote(url, grace=0).deleted.count >= 3  # v1's tree, locator and old pack
    out, err = check.communicate(timeout=120)
    assert stats(slow)["pack_requests"] >= 2 and check.returncode == 0, out + err
    assert json.loads(out)["problems"] == []
