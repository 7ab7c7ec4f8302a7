"""Snapshots of many files: linked by two threads, complete, read-only; a missing blob is a clear error."""

from __future__ import annotations

import os
import stat

import pytest

from cas import Cache, CorruptObject
from cas.local import snapshots

from .conftest import blobs_of


def many_files(root, count: int) -> dict[str, bytes]:
    files = {f"d{i % 3}/sub{i % 2}/f{i:03d}.bin": os.urandom(i % 50 + 1) for i in range(count)}
    files["top.txt"] = b"top"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "top.txt", 0o755)
    return files


def test_a_snapshot_linked_by_two_threads_is_whole_and_read_only(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "PARALLEL_LINKS", 8)
    files = many_files(tmp_path / "model", 60)
    cache = Cache(tmp_path / "cache", durable=False)
    snap = cache.materialize(cache.add(tmp_path / "model", "m:v1"))
    found = {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert found == files
    assert os.stat(snap / "top.txt").st_mode & stat.S_IXUSR
    for d in [snap, *(p for p in snap.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o555, d
    assert [p.name for p in snap.parent.iterdir()] == [snap.name]  # no staging left behind


@pytest.mark.parametrize("threshold", [8, 10**9])
def test_a_missing_blob_is_a_corrupt_object_and_no_snapshot_is_left(tmp_path, monkeypatch, threshold):
    monkeypatch.setattr(snapshots, "PARALLEL_LINKS", threshold)
    many_files(tmp_path / "model", 60)
    cache = Cache(tmp_path / "cache", durable=False)
    info = cache.add(tmp_path / "model", "m:v1")
    victim = sorted(blobs_of(cache))[-1]
    victim.unlink()
    with pytest.raises(CorruptObject, match=f"blob {victim.name} for .* is missing .* run 'cas verify'"):
        cache.materialize(info)
    assert not cache.snapshots.built(info.root)
    assert list(cache.snapshots.dir.iterdir()) == []


AT_THE_FD_LIMIT = """
import os, resource, sys
from cas import Cache, CasError

cache = Cache(sys.argv[1])
info = cache.get("m:v1")
cache.materialize(info)  # built already: what the service resolves next needs no more files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
fillers = []
try:
    while True:
        fillers.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    cache.lease(info)
    print("leased")
except CasError as e:
    print("error:", e)
for fd in fillers:
    os.close(fd)
sys.stdout.flush()
sys.stdin.readline()  # still running (a service using the model) while the test removes it
"""


def test_a_model_is_never_resolved_without_its_lease_when_files_run_out(tmp_path, synthetic):
    """Out of file descriptors, taking the lease fails loudly: a silent "no lease" let 'cas rm' delete a model
    a service was using (only a read-only cache may go without one)."""
    import subprocess
    import sys

    from .conftest import REPO, cas_cli

    home = tmp_path / "cache"
    Cache(home).add(synthetic, "m:v1")
    service = subprocess.Popen([sys.executable, "-c", AT_THE_FD_LIMIT, str(home)], cwd=REPO, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        answer = service.stdout.readline().strip()
        assert answer.startswith("error: could not take the lease"), answer
        assert "too many files open" in answer and "ulimit -n" in answer
    finally:
        service.communicate("\n", timeout=30)
    cas_cli("rm", "m:v1", home=home)
