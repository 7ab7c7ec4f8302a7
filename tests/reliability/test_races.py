"""Races between processes: first accesses of one cold model, overlapping pushes, a removal during resolution."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache, check_repository

from ..conftest import READY, REPO, published, start_together, stats, tree_files

pytestmark = pytest.mark.reliability

RACER = """
import hashlib, json, sys, descriptor
class Service:
    model = descriptor.Model("minilm:latest")
{READY}
m = Service().model
digest = hashlib.sha256()
for p in sorted(m.path.rglob("*")):
    if p.is_file():
        digest.update(str(p.relative_to(m.path)).encode() + p.read_bytes())
print(json.dumps({"tag": m.tag, "path": str(m.path), "digest": digest.hexdigest()}))
""".replace("{READY}", READY)


def test_16_processes_first_accessing_a_cold_model_fetch_each_chunk_once(tmp_path, minilm, server, proxy, token):
    url, _ = server
    packed = published(tmp_path, minilm, "minilm:v1", url).bytes_uploaded
    counting = proxy(url)
    env = {**os.environ, "CAS_HOME": str(tmp_path / "host"), "CAS_REMOTE": counting}
    procs = start_together([[sys.executable, "-c", RACER]] * 16, env)
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({(o["tag"], o["path"], o["digest"]) for o in outs}) == 1  # identical, complete snapshots
    assert tree_files(Path(outs[0]["path"])) == tree_files(minilm)
    assert stats(counting)["pack_bytes"] == packed


TRIALS = int(os.environ.get("CAS_RELIABILITY_TRIALS", "2"))
PUSH = f"import sys; from cas import Cache; c = Cache(sys.argv[1]); {READY}; c.push(sys.argv[2], sys.argv[3])"


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cache]:
    """Four models sharing most chunks, each in its own cache: tag -> cache."""
    from tests.support import synth

    d = tmp_path_factory.mktemp("overlapping")
    base = synth.model_tensors(91, 24 << 20, layer_bytes=1 << 20)
    models = {
        "m:base": base,
        "m:tuned": synth.fine_tune(base, 0.2, seed=92),
        "m:more": base + synth.model_tensors(93, 4 << 20, layer_bytes=1 << 20),
        "other:v1": synth.fine_tune(base, 0.5, seed=94),
    }
    caches = {}
    for i, (tag, tensors) in enumerate(models.items()):
        caches[tag] = Cache(d / f"c{i}", durable=False)
        caches[tag].add(synth.write_model_dir(d / f"m{i}", tensors), tag)
    return caches


@pytest.mark.parametrize("trial", range(TRIALS))
def test_concurrent_pushes_of_overlapping_models_lose_no_ref_and_corrupt_no_pack(tmp_path, overlapping, server,
                                                                                 token, trial):  # fmt: skip
    url, _ = server
    procs = start_together([[sys.executable, "-c", PUSH, str(c.root), tag, url] for tag, c in overlapping.items()])
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    assert [p.wait(timeout=300) for p in procs] == [0] * len(procs)
    report = check_repository(url, deep=True)
    assert report.ok, report.problems
    assert report.refs == len(overlapping)
    host = Cache(tmp_path / "host")
    for tag, cache in overlapping.items():
        host.pull(tag, url)
        assert tree_files(host.materialize(tag)) == tree_files(cache.materialize(tag))


RESOLVE = """
import hashlib, json, sys, time
from cas import CasError
import descriptor
class Service:
    model = descriptor.Model("m:v1")
{READY}
time.sleep(float(sys.argv[1]))  # spread over the removal: some resolvers start before it, some during
start = time.monotonic()
try:
    path = Service().model.path
    end = time.monotonic()
    files = {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*")
             if p.is_file()}
    print(json.dumps({"files": files, "span": [start, end]}))
except CasError as e:
    print(json.dumps({"error": str(e), "kind": type(e).__name__, "span": [start, time.monotonic()]}))
""".replace("{READY}", READY)
RM = f"""
import contextlib, json, sys, time
from cas.cli import main
{READY}
start = time.monotonic()
with contextlib.redirect_stdout(sys.stderr):
    code = main(['rm', 'm:v1'])
print(json.dumps({{"code": code, "span": [start, time.monotonic()]}}))
"""
OVERLAPS: list[bool] = []  # per trial: whether a resolution ran while the removal did (CLOCK_MONOTONIC is system-wide)


@pytest.fixture(scope="module", autouse=True)
def some_trials_overlapped():
    """The rm-during-resolve trials must include real overlaps, or they test nothing but ordering."""
    yield
    if OVERLAPS:
        assert any(OVERLAPS), f"no resolution ran during a removal in {len(OVERLAPS)} trials"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_rm_while_another_process_resolves_gives_the_whole_model_or_a_clear_error(tmp_path, synthetic, trial):
    cache = Cache(tmp_path / "cache")
    cache.add(synthetic, "m:v1")
    want = {name: hashlib.sha256(data).hexdigest() for name, data in tree_files(synthetic).items()}
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_OFFLINE": "1"}
    delays = [f"{d / 1000:.4f}" for d in (0, 1, 2, 4, 8, 16)]
    *resolvers, rm = start_together([[sys.executable, "-c", RESOLVE, d] for d in delays] +
                                    [[sys.executable, "-c", RM]], env)  # fmt: skip
    removal = json.loads(rm.communicate(timeout=120)[0])
    assert removal["code"] == 0
    overlapped = False
    for p in resolvers:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        result = json.loads(out)
        if "files" in result:
            assert result["files"] == want  # the whole model, byte for byte
        else:
            assert result["kind"] == "NotFound" and "m:v1" in result["error"], result
        overlapped |= result["span"][0] < removal["span"][1] and removal["span"][0] < result["span"][1]
    OVERLAPS.append(overlapped)
    assert cache.verify().ok


HOLDER = """
import sys, time, descriptor
class Service:
    model = descriptor.Model("m:v1")
print(Service().model.path, flush=True)
sys.stdin.read()  # hold the model until told to exit
"""


def test_a_model_in_use_keeps_its_snapshot_through_rm_until_its_user_exits(tmp_path, synthetic):
    cache = Cache(tmp_path / "cache")
    cache.add(synthetic, "m:v1")
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_OFFLINE": "1"}
    user = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    path = Path(user.stdout.readline().strip())
    cache.delete("m:v1")
    assert cache.list() == []
    assert tree_files(path) == tree_files(synthetic)  # still whole for the service using it
    report = cache.verify()
    assert report.ok and any("in use by a running process: kept" in line for line in report.orphaned)
    assert path.is_dir()
    user.communicate("")
    report = cache.verify()
    assert f"removed orphan {path}" in report.repaired
    assert not path.exists()


PULL = f"import sys; from cas import Cache; c = Cache(sys.argv[1]); {READY}; c.pull(sys.argv[2], sys.argv[3])"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_pulls_of_two_models_sharing_a_file_race_on_one_host_and_both_complete(tmp_path, trial):
    """Each pull assembles its files under its own root: two pulls sharing a file never publish each other's part."""
    url = f"file://{tmp_path / 'repo'}"
    src = Cache(tmp_path / "src", durable=False)
    shared = os.urandom(48 << 20)
    models = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "shared.bin").write_bytes(shared)
        (folder / "own.bin").write_bytes(os.urandom(1 << 20))
        src.add(folder, f"{name}:v1")
        src.push(f"{name}:v1", url)
        models[f"{name}:v1"] = folder
    home = tmp_path / "host"
    procs = start_together([[sys.executable, "-c", PULL, str(home), tag, url] for tag in models])
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    host = Cache(home)
    for tag, folder in models.items():
        assert tree_files(host.materialize(tag)) == tree_files(folder)
    assert host.verify().ok
