"""gc to a budget, ``cas rm`` and ``cas rm --remote`` killed at seeded points (as in ``test_crashes``): nothing
visible is half there, the leftovers are only what ``verify`` and gc clean up, and the next run completes.

A visible snapshot is one a service could be handed without building it: each one left must hold every file
of its version, byte for byte.  ``CAS_RELIABILITY_TRIALS`` trials each (2 by default, 50 in the full run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache, CasError, check_repository, list_remote, prune_remote

from ..conftest import REPO, tree_files
from .test_crashes import CLI, TRIALS, Window, assert_consistent, kill_midway, kills_landed, span  # noqa: F401 - autouse

pytestmark = pytest.mark.reliability
VERSIONS = 300


def _folder(root: Path, i: int) -> Path:
    return root / "models" / str(i)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 versions of three models (8 small files each), every one materialized and recorded as pulled (gc may
    evict it), and mine:v1 stored here only: (cache root, folder of the sources)."""
    d = tmp_path_factory.mktemp("lifecycle-crowded")
    cache = Cache(d / "cache", durable=False)
    for i in range(VERSIONS):
        folder = _folder(d, i)
        folder.mkdir(parents=True)
        for j in range(8):
            (folder / f"f{j}.bin").write_bytes(os.urandom(4096))
        info = cache.add(folder, f"m{i % 3}:v{i}")
        cache.refs.add_remote(info, "file:///elsewhere")
        cache.materialize(info)
    cache.add(_folder(d, 0), "mine:v1")  # its twin m0:v0 shares every blob
    cache.chunk_index().close()  # its WAL goes with the connection: the copies must not race it
    return cache.root, d


def copy_of(crowded: tuple[Path, Path], dest: Path) -> Path:
    """A copy with its hardlinks kept (a snapshot's files are its blobs), as ``cp -a`` makes it."""
    subprocess.run(["cp", "-a", str(crowded[0]), str(dest)], check=True)
    return dest


def source_of(d: Path, tag: str) -> Path:
    return _folder(d, 0 if tag == "mine:v1" else int(tag.split(":v")[1]))


def assert_visible_whole(cache: Cache, d: Path) -> None:
    """Every snapshot still there for a listed version is complete, and every listed version materializes whole."""
    for info in cache.list():
        snap = cache.root / "snapshots" / info.root
        if snap.exists():
            assert tree_files(snap) == tree_files(source_of(d, info.tag)), info.tag
    for info in cache.list():
        assert tree_files(cache.materialize(info)) == tree_files(source_of(d, info.tag)), info.tag


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def cas_json(home: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "cas", "--home", str(home), *args, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- gc evicting to a budget -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget(crowded) -> int:
    """Half of what the crowded cache takes on disk: gc evicts about half the versions."""
    return cas_json(crowded[0], "du")["total"] // 2


@pytest.fixture(scope="module")
def gc_budget_span(tmp_path_factory: pytest.TempPathFactory, crowded, budget) -> Window:
    home = copy_of(crowded, tmp_path_factory.mktemp("gc-budget-span") / "cache")
    return span(cli("gc", "--max-size", str(budget)), {**os.environ, "CAS_HOME": str(home)})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_gc_evicting_to_a_budget_midway(tmp_path, crowded, budget, gc_budget_span, trial):
    home = copy_of(crowded, tmp_path / "cache")
    env = {**os.environ, "CAS_HOME": str(home)}
    kill_midway("cas gc --max-size", cli("gc", "--max-size", str(budget)), env, gc_budget_span, trial, salt=1100)
    cache = Cache(home)
    assert_visible_whole(cache, crowded[1])
    assert_consistent(cache)
    report = cas_json(home, "gc", "--max-size", str(budget))
    assert not report["over_budget"], json.dumps({**report, "du": cas_json(home, "du")["total"]})
    assert cas_json(home, "du")["total"] <= budget
    assert "mine:v1" in [i.tag for i in cache.list()]  # stored here only: never evicted
    assert_visible_whole(cache, crowded[1])
    assert cache.verify().ok


# -- cas rm ------------------------------------------------------------------------------------------------------

RM = ("m0", "m1")  # two of the three models: every version, their snapshots and the blobs only they hold


@pytest.fixture(scope="module")
def rm_span(tmp_path_factory: pytest.TempPathFactory, crowded) -> Window:
    """The shorter of two runs: a removal takes about a second, and one slow measuring run (a cold copy) made
    the kills aimed at the last part of the window land after the removal had ended (3 of 8 landed)."""
    spans = []
    for i in range(2):
        home = copy_of(crowded, tmp_path_factory.mktemp(f"rm-span-{i}") / "cache")
        spans.append(span(cli("rm", *RM), {**os.environ, "CAS_HOME": str(home)}))
    return min(spans, key=lambda window: window.seconds)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_rm_midway(tmp_path, crowded, rm_span, trial):
    home = copy_of(crowded, tmp_path / "cache")
    env = {**os.environ, "CAS_HOME": str(home)}
    kill_midway("cas rm", cli("rm", *RM), env, rm_span, trial, salt=1200)
    cache = Cache(home)
    assert_visible_whole(cache, crowded[1])
    assert_consistent(cache)
    left = [n for n in RM if cache.list(n)]
    if left:  # the next run removes what the killed one had not
        subprocess.run([sys.executable, "-m", "cas", "rm", *left], cwd=REPO, env=env, check=True,
                       capture_output=True)  # fmt: skip
    assert sorted({i.name for i in cache.list()}) == ["m2", "mine"]
    assert_visible_whole(cache, crowded[1])
    cache.gc()
    assert cache.verify().ok


# -- cas rm --remote ---------------------------------------------------------------------------------------------

REMOTE_VERSIONS = 120


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, crowded) -> Path:
    """A file:// repository holding 120 versions (40 of each model)."""
    repo = tmp_path_factory.mktemp("rm-remote") / "repo"
    cache = Cache(crowded[0], durable=False)
    for i in range(REMOTE_VERSIONS):
        cache.push(f"m{i % 3}:v{i}", f"file://{repo}")
    cache.chunk_index().close()
    return repo


@pytest.fixture(scope="module")
def rm_remote_span(tmp_path_factory: pytest.TempPathFactory, published) -> Window:
    repo = tmp_path_factory.mktemp("rm-remote-span") / "repo"
    subprocess.run(["cp", "-a", str(published), str(repo)], check=True)
    return span(cli("rm", "--remote", f"file://{repo}", *RM), {**os.environ, "CAS_HOME": str(repo.parent / "home")})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_rm_remote_midway(tmp_path, crowded, published, rm_remote_span, trial):
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(published), str(repo)], check=True)
    url = f"file://{repo}"
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home")}
    kill_midway("cas rm --remote", cli("rm", "--remote", url, *RM), env, rm_remote_span, trial, salt=1300)
    report = check_repository(url, deep=True)  # every ref left is whole
    assert report.ok, report.problems
    left = sorted({i.name for i in list_remote(url)} & set(RM))
    if left:
        subprocess.run([sys.executable, "-m", "cas", "rm", "--remote", url, *left], cwd=REPO, env=env, check=True,
                       capture_output=True)  # fmt: skip
    kept = list_remote(url)
    assert {i.name for i in kept} == {"m2"} and len(kept) == REMOTE_VERSIONS // 3
    prune_remote(url, grace=0)
    prune_remote(url, grace=0)
    report = check_repository(url, deep=True)
    assert report.ok and report.orphans == [], report
    host = Cache(tmp_path / "host", durable=False)
    for info in kept[:5]:
        host.pull(info.tag, url)
        assert tree_files(host.materialize(info.tag)) == tree_files(source_of(crowded[1], info.tag))
    with pytest.raises(CasError, match="is not in the repository"):
        host.pull("m0:v0", url)
