"""The decoders of repository objects under a bounded fuzzing run (``python -m tests.reliability.fuzz`` for more)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import REPO
from . import fuzz

pytestmark = pytest.mark.reliability


def test_decoders_refuse_mutated_input_with_clear_errors_only():
    """In a process of its own, so its peak memory is the decoders' and a decoder that hangs is cut off."""
    seconds = float(os.environ.get("CAS_FUZZ_SECONDS", "5"))
    args = ["--seconds", str(seconds), "--seed", os.environ.get("CAS_FUZZ_SEED", "0")]
    out = subprocess.run([sys.executable, "-m", "tests.reliability.fuzz", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=seconds + 120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    cases = int(out.stdout.split()[0])
    assert cases > 1000 * seconds, out.stdout  # the decoders ran: about 5,000 cases a second here (imports write)


def test_the_mutator_changes_its_input():
    import random

    rng = random.Random(3)
    seed = b"\x92\x01\x90" * 10
    assert sum(fuzz.mutate(rng, seed) != seed for _ in range(100)) > 90


def test_every_seed_is_valid_before_it_is_mutated():
    """A seed its own decoder refuses would fuzz nothing but the first check."""
    for valid, decode in fuzz.seeds().values():
        decode(valid)  # raises if the seed is not valid
