"""Killing a writer at any moment leaves the cache and the repository consistent and the operation repeatable.

Each test kills one operation with SIGKILL after a seeded random delay
(``CAS_RELIABILITY_TRIALS`` trials each: 3 by default, 50 in the full run),
then checks that ``cas verify`` passes, that no ref points at missing data
and no half-built snapshot is visible, and that the same operation then
succeeds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cas import Cache
from cas.repocheck import check_repository
from cas.sync import pull, push

from ..conftest import REPO, tree_files

TRIALS = int(os.environ.get("CAS_RELIABILITY_TRIALS", "3"))

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400 MB model: large enough that an add can be killed midway."""
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    with open(d / "model.safetensors", "wb") as f:
        for _ in range(25):
            f.write(rng.integers(0, 255, 16 << 20, dtype=np.uint8).tobytes())
    (d / "config.json").write_text("{}")
    return d


def kill_midway(args: list[str], env: dict[str, str], delay: float, ready: bool = False) -> None:
    """SIGKILL after ``delay`` s; with ``ready``, counted from the child's "ready" line (its imports done)."""
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    if ready:
        assert proc.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_consistent(cache: Cache) -> None:
    for info in cache.list():  # any visible ref is whole
        cache.tree(info)
    report = cache.verify()
    assert report.ok, report
    assert not [p for p in (cache.root / "snapshots").glob(".tmp-*")] if (cache.root / "snapshots").exists() else True
    assert not list((cache.root / "tmp").iterdir()) if (cache.root / "tmp").exists() else True


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_add_midway(tmp_path, big_model, trial):
    cache = Cache(tmp_path / "cache")
    env = {**os.environ, "CAS_HOME": str(cache.root)}
    delay = random.Random(trial).uniform(0.3, 1.5)
    kill_midway([sys.executable, "-m", "cas", "add", str(big_model), "big:v1"], env, delay)
    assert_consistent(cache)
    cache.add(big_model, "big:v1")
    assert tree_files(cache.materialize("big:v1")) == tree_files(big_model)
    assert cache.verify().ok


MATERIALIZE = (
    "import sys; from cas import Cache; c = Cache(sys.argv[1]); print('ready', flush=True); c.materialize('many:v1')"
)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_materialize_midway(tmp_path, trial):
    src = tmp_path / "src"
    for i in range(3000):
        p = src / f"d{i % 30}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"file {i}\n")
    cache = Cache(tmp_path / "cache")
    cache.add(src, "many:v1")
    delay = random.Random(trial).uniform(0.0, 0.35)  # materializing its 3,000 files takes 0.25-0.4 s here
    kill_midway([sys.executable, "-c", MATERIALIZE, str(cache.root)], dict(os.environ), delay, ready=True)
    snaps = [p.name for p in (cache.root / "snapshots").iterdir()] if (cache.root / "snapshots").exists() else []
    root = cache.get("many:v1").root
    if root in snaps:  # finished before the kill: then it must be complete
        assert tree_files(cache.root / "snapshots" / root) == tree_files(src)
    assert_consistent(cache)
    assert tree_files(cache.materialize("many:v1")) == tree_files(src)


CREATE = """
import shutil, sys
from pathlib import Path
from cas import Cache
with Cache(sys.argv[1]).create("big") as staging:
    for f in Path(sys.argv[2]).iterdir():
        shutil.copyfile(f, staging.path / f.name)
"""


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_create_midway(tmp_path, big_model, trial):
    cache = Cache(tmp_path / "cache")
    delay = random.Random(100 + trial).uniform(0.1, 1.5)
    kill_midway([sys.executable, "-c", CREATE, str(cache.root), str(big_model)], dict(os.environ), delay)
    assert_consistent(cache)
    subprocess.run([sys.executable, "-c", CREATE, str(cache.root), str(big_model)], cwd=REPO, check=True)
    assert tree_files(cache.materialize("big:latest")) == tree_files(big_model)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, big_model: Path) -> Cache:
    cache = Cache(tmp_path_factory.mktemp("stored") / "cache", durable=False)
    cache.add(big_model, "big:v1")
    return cache


def assert_repository_consistent(url: str) -> None:
    report = check_repository(url, deep=True)
    assert report.ok, report.problems


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_push_midway(tmp_path, big_model, stored, trial):
    url = f"file://{tmp_path / 'repo'}"
    env = {**os.environ, "CAS_HOME": str(stored.root)}
    delay = random.Random(200 + trial).uniform(0.2, 2.5)
    kill_midway([sys.executable, "-m", "cas", "push", "big:v1", "--remote", url], env, delay)
    if (tmp_path / "repo").exists():
        assert_repository_consistent(url)  # a ref, if there is one, has all its data
    assert stored.verify().ok
    push(stored, "big:v1", url)
    assert_repository_consistent(url)
    host = Cache(tmp_path / "host")
    pull(host, "big:v1", url)
    assert tree_files(host.materialize("big:v1")) == tree_files(big_model)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, stored: Cache) -> str:
    url = f"file://{tmp_path_factory.mktemp('pushed') / 'repo'}"
    push(stored, "big:v1", url)
    return url


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_pull_midway(tmp_path, big_model, pushed, trial):
    cache = Cache(tmp_path / "cache")
    env = {**os.environ, "CAS_HOME": str(cache.root)}
    delay = random.Random(300 + trial).uniform(0.2, 2.0)
    kill_midway([sys.executable, "-m", "cas", "pull", "big:v1", "--remote", pushed], env, delay)
    time.sleep(0.2)  # let the pull's worker processes see it die
    if cache.list():  # finished before the kill: then it must be whole
        assert tree_files(cache.materialize("big:v1")) == tree_files(big_model)
    assert_consistent(cache)
    pull(cache, "big:v1", pushed)
    assert tree_files(cache.materialize("big:v1")) == tree_files(big_model)
    assert_repository_consistent(pushed)
