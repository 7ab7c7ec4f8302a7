"""Caches a service cannot write, and caches a group of users shares.

Services often run as an unprivileged user on a cache a provisioning step
filled, or on a read-only volume (a Kubernetes ``readOnly`` mount, a baked
image).  These tests fill a cache as root, then run the service as
``nobody`` (``setpriv``) or on a read-only bind mount of it (``unshare``),
and check that every model with a snapshot resolves, that anything needing
a write is one clear error, and that nothing in the cache changed.  A group
of users sharing one cache (``chmod 2775``, umask 077) each add, pull,
resolve, remove and verify models the others made.

The other users' processes keep CAP_DAC_READ_SEARCH, only so that they can
start the interpreter under /root (a 0700 directory here); it lets them
read and search anywhere but write nothing more, and the modes the shared
cache must have are checked file by file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache

from .conftest import IN_CI, REPO, TOKEN, published, tree_files

NOBODY = 65534
GROUP = 3000  # the group sharing a cache
ALICE, BOB = 2001, 2002


@pytest.fixture(autouse=True)
def root_and_setpriv() -> None:
    if os.geteuid() != 0:
        pytest.skip("running a process as another user needs root (CI runs as root)")
    if not shutil.which("setpriv"):
        if IN_CI:
            pytest.fail("setpriv (util-linux) is missing")
        pytest.skip("setpriv (util-linux) is missing")


def as_user(uid: int, gid: int, *, umask: int = 0o022) -> list[str]:
    """A command prefix that runs as ``uid`` in group ``gid`` with ``umask``."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={gid}", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search", "sh", "-c", f'umask {umask:03o}; exec "$@"', "sh"]  # fmt: skip


def run(prefix: list[str], *cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


SERVICE = """
import json, sys, descriptor
from cas import CasError
seen = {}
for tag in sys.argv[1:]:
    class Service:
        model = descriptor.Model(tag)
    try:
        model = Service().model
        seen[tag] = {"path": str(model.path)}
    except CasError as e:
        seen[tag] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(seen))
"""


def listing(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under ``root`` with its mode, size and modification time: what a write would change."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            st = os.lstat(Path(dirpath, n))
            out[str(Path(dirpath, n).relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime)
    return out


@pytest.fixture
def provisioned(tmp_path, synthetic, minilm, server, token) -> tuple[Cache, str, Path]:
    """A cache filled by root: ``ready:v1`` materialized, ``unbuilt:v1`` stored without a snapshot; and a
    repository holding ``cold:v1``, which the cache lacks."""
    url, _ = server
    cold = tmp_path / "cold-model"
    cold.mkdir()
    (cold / "weights.bin").write_bytes(os.urandom(1 << 20))
    published(tmp_path, cold, "cold:v1", url)
    cache = Cache(tmp_path / "cache")
    cache.add(synthetic, "ready:v1")
    cache.materialize("ready:v1")
    cache.add(minilm, "unbuilt:v1")
    return cache, url, synthetic


def check_read_only_outcome(seen: dict, cache: Cache, model: Path, why: str) -> None:
    assert tree_files(Path(seen["ready:v1"]["path"])) == tree_files(model)
    unbuilt, cold = seen["unbuilt:v1"]["error"], seen["cold:v1"]["error"]
    assert unbuilt.startswith(f"CacheNotWritable: Service.model: the cache at {cache.root} is not writable by this "
                              f"process: {why}")  # fmt: skip
    assert "run 'cas materialize unbuilt:v1' as the cache's owner when provisioning" in unbuilt
    assert cold.startswith("CacheNotWritable: Service.model: ") and "run 'cas pull cold:v1'" in cold
    assert "\n" not in unbuilt + cold


def test_a_service_run_as_nobody_on_a_cache_root_filled(provisioned):
    cache, url, model = provisioned
    before = listing(cache.root)
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_REMOTE": url}
    out = run(as_user(NOBODY, NOBODY), sys.executable, "-c", SERVICE, "ready:v1", "unbuilt:v1", "cold:v1", env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    check_read_only_outcome(json.loads(out.stdout), cache, model, "Permission denied")
    assert listing(cache.root) == before  # nothing written, nothing half-made


REFRESHING = """
import sys, warnings, descriptor
class Service:
    model = descriptor.Model("ready:latest", refresh=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(Service().model.tag)
print(*[w.message for w in caught], sep="\\n", file=sys.stderr)
"""


def test_refresh_on_a_cache_nobody_can_write_starts_on_the_local_version(provisioned):
    """refresh=True needs a write (a lock, a pull); where it cannot have one it falls back like a repository down."""
    cache, url, _ = provisioned
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_REMOTE": url}
    out = run(as_user(NOBODY, NOBODY), sys.executable, "-c", REFRESHING, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ready:v1", out.stderr
    assert "could not refresh ready:latest" in out.stderr and "not writable" in out.stderr


def test_a_cache_nobody_can_write_still_pushes(provisioned):
    """Pushing reads the cache; the pack indexes it would keep for the next push are skipped."""
    cache, url, _ = provisioned
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_TOKEN": TOKEN}
    out = run(as_user(NOBODY, NOBODY), sys.executable, "-m", "cas", "push", "ready:v1", "--remote", url, env=env)
    assert out.returncode == 0, out.stderr
    assert Cache(cache.root.parent / "elsewhere").pull("ready:v1", url).info.root == cache.get("ready:v1").root


def test_a_service_on_a_read_only_volume(provisioned):
    """As a Kubernetes readOnly mount or a baked image: the cache is bind-mounted read-only for the service."""
    cache, url, model = provisioned
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mount namespaces (unshare -m)")
    before = listing(cache.root)
    env = {**os.environ, "CAS_HOME": str(cache.root), "CAS_REMOTE": url}
    mount = f'mount --bind -o ro "{cache.root}" "{cache.root}" && exec "$@"'
    out = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", sys.executable, "-c", SERVICE, "ready:v1",
                          "unbuilt:v1", "cold:v1"], capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    check_read_only_outcome(json.loads(out.stdout), cache, model, "Read-only file system")
    assert listing(cache.root) == before


def test_a_cache_shared_by_a_group_works_for_each_of_its_users(tmp_path, synthetic, minilm, server, token):
    url, _ = server
    published(tmp_path, minilm, "b:v1", url)
    root = tmp_path / "shared"
    root.mkdir()
    os.chown(root, 0, GROUP)
    os.chmod(root, 0o2775)  # how an administrator shares a cache with a group
    env = {k: v for k, v in os.environ.items() if k != "CAS_TOKEN"}
    env.update(CAS_HOME=str(root), CAS_REMOTE=url)
    alice, bob = as_user(ALICE, GROUP, umask=0o077), as_user(BOB, GROUP, umask=0o077)
    cas = [sys.executable, "-m", "cas"]
    steps = [
        (alice, [*cas, "add", str(synthetic), "a:v1"]),
        (bob, [*cas, "pull", "b:v1"]),  # into blob folders, locks and a chunk index alice made
        (alice, [sys.executable, "-c", SERVICE, "b:v1"]),  # materializes from bob's blobs
        (bob, [sys.executable, "-c", SERVICE, "a:v1"]),  # materializes alice's model
        (alice, [*cas, "rm", "a:v1"]),  # its snapshot is bob's: moved aside for bob's verify
        (bob, [*cas, "verify"]),
        (alice, [*cas, "verify"]),
        (bob, [sys.executable, "-c", SERVICE, "b:v1"]),
    ]
    for user, cmd in steps:
        out = run(user, *cmd, env=env)
        assert out.returncode == 0 and "error" not in out.stdout, f"{cmd[2:4]} as {user[1]}:\n{out.stdout}{out.stderr}"
    seen = json.loads(out.stdout)
    assert tree_files(Path(seen["b:v1"]["path"])) == tree_files(minilm)
    cache = Cache(root)
    assert [i.tag for i in cache.list()] == ["b:v1"] and cache.verify().ok
    assert sorted(os.listdir(root / "snapshots")) == [cache.get("b:v1").root]  # bob removed what alice moved aside
    owners = set()
    for path, (mode, _, _) in listing(root).items():
        full = root / path
        owners.add(os.lstat(full).st_uid)
        if stat.S_ISLNK(mode) or path.startswith("snapshots/"):
            continue  # snapshots are read-only for everybody
        assert mode & stat.S_IRGRP, f"{path} is not readable by the group"
        if stat.S_ISDIR(mode):
            assert mode & stat.S_IWGRP and mode & stat.S_ISGID and os.stat(full).st_gid == GROUP, path
        elif path.startswith("locks/") or path.startswith("chunks.sqlite"):
            assert mode & stat.S_IWGRP, f"{path} is not writable by the group"
    assert {ALICE, BOB} <= owners
