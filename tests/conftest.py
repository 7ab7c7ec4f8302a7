"""Shared fixtures: a fresh cache per test, the packaged MiniLM model, synthetic models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import synth
from benchmarks.synth import minilm_path
from cas import Cache

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 files (about 90 MB) as shipped by its package."""
    path = minilm_path()
    assert (path / "model.safetensors").stat().st_size > 80_000_000
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MB synthetic safetensors model directory."""
    d = tmp_path_factory.mktemp("synthetic")
    return synth.write_model_dir(d / "base", synth.model_tensors(seed=1, total_bytes=24 << 20))


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative POSIX path, with its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def cas_cli(*args: str, home: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``cas`` command line in a subprocess."""
    env = {**(env or os.environ), "CAS_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "cas", *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
