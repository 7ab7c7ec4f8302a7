"""gc against everything else a host does at once, and gc killed midway.

A gc evicting every version it may (``--max-size 0``) starts together with a
service's first access to a model it is about to evict, a pull, an add and
another gc.  Nothing in use or being written may disappear: each service
reads the bytes it was promised, the pull and the add complete, and the
cache verifies afterwards.  Killed at a seeded point, gc leaves no ref
whose data is missing, and the next gc completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from cas import Cache

from ..conftest import READY, start_together, tree_files
from .test_crashes import CLI, Window, kill_midway, kills_landed, span  # noqa: F401 - kills_landed: autouse check

pytestmark = pytest.mark.reliability

TRIALS = int(os.environ.get("CAS_RELIABILITY_TRIALS", "2"))

SERVICE = """
import hashlib, json, sys, descriptor
class Service:
    model = descriptor.Model(sys.argv[1])
{READY}
m = Service().model
digest = hashlib.sha256()
for p in sorted(m.path.rglob("*")):
    if p.is_file():
        digest.update(str(p.relative_to(m.path)).encode() + p.read_bytes())
print(json.dumps({"tag": m.tag, "digest": digest.hexdigest()}))
""".replace("{READY}", READY)

COMMAND = f"import sys; from cas.cli import main; {READY}; sys.exit(main(sys.argv[1:]))"


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    """A file:// repository holding four 8 MB models sharing a config: (URL, tag -> its files)."""
    d = tmp_path_factory.mktemp("gc-race")
    url = f"file://{d / 'repo'}"
    src = Cache(d / "src", durable=False)
    folders = {}
    for i in range(1, 5):
        folder = d / f"m{i}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(os.urandom(8 << 20))
        (folder / "config.json").write_text('{"hidden": 384}')
        src.add(folder, f"m{i}:v1")
        src.push(f"m{i}:v1", url)
        folders[f"m{i}:v1"] = folder
    return url, folders


@pytest.mark.parametrize("trial", range(TRIALS))
def test_gc_racing_first_accesses_a_pull_an_add_and_another_gc_loses_nothing_in_use(tmp_path, models, trial):
    url, folders = models
    home = tmp_path / "home"
    cache = Cache(home, durable=False)
    cache.pull("m1:v1", url)
    cache.pull("m2:v1", url)
    added = tmp_path / "added"
    added.mkdir()
    (added / "weights.bin").write_bytes(os.urandom(4 << 20))
    env = {**os.environ, "CAS_HOME": str(home), "CAS_REMOTE": url}
    gc = [sys.executable, "-c", COMMAND, "gc", "--max-size", "0", "--json"]
    cmds = [
        [sys.executable, "-c", SERVICE, "m1:v1"],  # here, evictable: gc may take it between resolve and lease
        [sys.executable, "-c", SERVICE, "m3:v1"],  # not here: pulled by the service
        [sys.executable, "-c", COMMAND, "pull", "m4:v1", "--json"],
        [sys.executable, "-c", COMMAND, "add", str(added), "mine:v1"],
        gc,
        gc,
    ]
    procs = start_together(cmds, env)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(cmds), [o[1] for o in outs]
    for tag, (out, _) in zip(["m1:v1", "m3:v1"], outs):
        assert json.loads(out) == {"tag": tag, "digest": _digest(folders[tag])}
    assert json.loads(outs[2][0])["tag"] == "m4:v1"
    report = cache.verify()
    assert report.ok, report
    assert "mine:v1" in [i.tag for i in cache.list()]  # stored here only: never evicted
    assert tree_files(cache.materialize("mine:v1")) == tree_files(added)
    for info in cache.list():
        assert tree_files(cache.materialize(info)) == tree_files(folders.get(info.tag, added))


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 versions of 10 small files each, all recorded as pushed (so gc may evict them all): long enough
    for a gc to be killed midway."""
    d = tmp_path_factory.mktemp("crowded")
    cache = Cache(d / "cache", durable=False)
    for i in range(600):
        folder = d / "models" / str(i)
        folder.mkdir(parents=True)
        for j in range(10):
            (folder / f"f{j}.bin").write_bytes(os.urandom(4096))
        info = cache.add(folder, f"m{i % 7}:v{i}")
        cache.refs.add_remote(info, "file:///elsewhere")
    cache.add(d / "models" / "0", "mine:v1")  # one stored here only, sharing its files with m0:v0
    return cache.root


@pytest.fixture(scope="module")
def gc_span(tmp_path_factory: pytest.TempPathFactory, crowded: Path) -> Window:
    home = tmp_path_factory.mktemp("gc-span") / "cache"
    shutil.copytree(crowded, home, symlinks=True)
    return span([sys.executable, "-c", CLI, "gc", "--max-size", "0"], {**os.environ, "CAS_HOME": str(home)})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_gc_midway(tmp_path, crowded, gc_span, trial):
    home = tmp_path / "cache"
    shutil.copytree(crowded, home, symlinks=True)
    env = {**os.environ, "CAS_HOME": str(home)}
    kill_midway("cas gc", [sys.executable, "-c", CLI, "gc", "--max-size", "0"], env, gc_span, trial, salt=1000)
    cache = Cache(home)
    models = crowded.parent / "models"
    for info in cache.list():  # what is still listed is whole
        folder = models / ("0" if info.name == "mine" else info.version[1:])
        assert tree_files(cache.materialize(info)) == tree_files(folder)
    report = cache.gc(0)
    assert sorted(i.tag for i in cache.list()) == ["m0:v0", "mine:v1"]  # mine:v1 is stored here only; m0:v0 is its twin
    assert sorted(k.tag for k in report.kept) == ["m0:v0", "mine:v1"]
    assert cache.verify().ok


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three pulled-looking versions of 1,500 small files each, their snapshots built: a gc evicting them spends
    most of its time deleting snapshot files, where a kill lands."""
    d = tmp_path_factory.mktemp("built")
    cache = Cache(d / "cache", durable=False)
    for i in range(3):
        folder = d / "models" / str(i)
        for j in range(1500):
            (folder / f"d{j % 15}").mkdir(parents=True, exist_ok=True)
            (folder / f"d{j % 15}" / f"f{j}.txt").write_bytes(f"{i}-{j}".encode() * 8)
        info = cache.add(folder, f"m{i}:v1")
        cache.refs.add_remote(info, "file:///elsewhere")
        cache.materialize(info)
    return cache.root


@pytest.fixture(scope="module")
def built_span(tmp_path_factory: pytest.TempPathFactory, built: Path) -> Window:
    home = tmp_path_factory.mktemp("built-span") / "cache"
    shutil.copytree(built, home, symlinks=True)
    return span([sys.executable, "-c", CLI, "gc", "--max-size", "0"], {**os.environ, "CAS_HOME": str(home)})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_gc_killed_while_it_removes_snapshots_never_leaves_one_that_looks_built(tmp_path, built, built_span, trial):
    """The first access after the kill, before any verify, gets every file of each version still listed."""
    import descriptor

    home = tmp_path / "cache"
    shutil.copytree(built, home, symlinks=True)
    env = {**os.environ, "CAS_HOME": str(home)}
    kill_midway("cas gc (snapshots)", [sys.executable, "-c", CLI, "gc", "--max-size", "0"], env, built_span, trial,
                salt=2000)  # fmt: skip
    cache = Cache(home)
    for info in cache.list():
        path = descriptor.Model(info.tag, cache=cache).resolve().path
        assert tree_files(path) == tree_files(built.parent / "models" / info.name[1:]), f"{info.tag}: incomplete"
    assert cache.verify().ok  # what the kill left (a .trash- folder) is a leftover, not damage
