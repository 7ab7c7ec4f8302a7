"""A file edited through its hardlink is found and repaired from a repository; a full disk during add or pull
ends in one clear error and a consistent cache."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from cas import Cache

from ..conftest import cas_cli, tree_files

pytestmark = pytest.mark.reliability


def test_a_file_edited_through_its_hardlink_is_found_and_repaired_from_the_repository(tmp_path, synthetic):
    cache = Cache(tmp_path / "cache")
    cache.add(synthetic, "m:v1")
    repo = f"file://{tmp_path / 'repo'}"
    cache.push("m:v1", repo)
    snap = cache.materialize("m:v1")
    victim = max((p for p in snap.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.chmod(victim, 0o644)  # root could write through 0444 anyway; this makes the test run as anyone
    with open(victim, "r+b") as f:
        f.seek(1000)
        f.write(b"tampered")
    report = cache.verify()
    assert not report.ok and report.tampered
    assert not snap.exists()  # the damaged snapshot can no longer be served
    cache.pull("m:v1", repo)  # fetches what verify removed
    assert tree_files(cache.materialize("m:v1")) == tree_files(synthetic)
    assert cache.verify().ok


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MB tmpfs (needs root and mount); tests that need it are skipped elsewhere, see the rlimit variant."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; test_a_file_size_limit_during_add_and_pull covers the error path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def model_80mb(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("m80")
    (d / "model.bin").write_bytes(os.urandom(80 << 20))
    (d / "config.json").write_text("{}")
    return d


def _assert_clean_failure(out: subprocess.CompletedProcess, home: Path) -> None:
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error:"), out.stderr
    assert ("No space left on device" in lines[0] and "'cas gc --max-size SIZE'" in lines[0]
            and str(home) in lines[0]) or ("File too large" in lines[0] and "ulimit -f" in lines[0])  # fmt: skip
    assert lines[0].endswith("run the command again"), lines[0]
    cache = Cache(home)
    assert cache.list() == []
    assert cache.verify().ok


def test_a_full_disk_during_add_and_pull(tmp_path, small_disk, model_80mb):
    home = small_disk / "cache"
    _assert_clean_failure(cas_cli("add", str(model_80mb), "big:v1", home=home, check=False), home)
    src = Cache(tmp_path / "src")
    src.add(model_80mb, "big:v1")
    repo = f"file://{tmp_path / 'repo'}"
    src.push("big:v1", repo)
    _assert_clean_failure(cas_cli("pull", "big:v1", "--remote", repo, home=home, check=False), home)
    assert sorted(p.name for p in small_disk.iterdir()) == ["cache"]  # nothing written beside the cache


def _limit_file_size() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as ENOSPC would be
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))


def test_a_file_size_limit_during_add_and_pull(tmp_path, model_80mb):
    """Runs anywhere: RLIMIT_FSIZE makes writes past 16 MB fail, the same path a full disk takes."""
    home = tmp_path / f"cache-{uuid.uuid4().hex[:6]}"
    _assert_clean_failure(
        cas_cli("add", str(model_80mb), "big:v1", preexec=_limit_file_size, home=home, check=False), home
    )
    src = Cache(tmp_path / "src")
    src.add(model_80mb, "big:v1")
    repo = f"file://{tmp_path / 'repo'}"
    src.push("big:v1", repo)
    env = {**os.environ, "CAS_PULL_PROCESSES": "1"}
    _assert_clean_failure(
        cas_cli("pull", "big:v1", "--remote", repo, env=env, preexec=_limit_file_size, home=home, check=False), home
    )
