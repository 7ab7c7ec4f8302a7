"""The habits the suite enforces: ruff's lint and format check over the code, and mypy strict on the package
(configured in pyproject.toml), so CI fails on a style slip or a type error as on a broken test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO, require

PATHS = ["cas", "descriptor", "tests", "benchmarks"]


@pytest.mark.parametrize("check", [["ruff", "check", *PATHS], ["ruff", "format", "--check", *PATHS]])
def test_ruff_passes(check):
    require("ruff")
    out = subprocess.run([sys.executable, "-m", *check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_mypy_strict_passes_on_the_package():
    require("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
