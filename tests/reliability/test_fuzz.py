"""The decoders of repository objects under a bounded fuzzing run (``python -m tests.reliability.fuzz`` for more)."""

from __future__ import annotations

import os

import pytest

from . import fuzz

pytestmark = pytest.mark.reliability


def test_decoders_refuse_mutated_input_with_clear_errors_only():
    seconds = float(os.environ.get("CAS_FUZZ_SECONDS", "5"))
    fuzz.run(seconds, seed=int(os.environ.get("CAS_FUZZ_SEED", "0")))  # raises on a misbehaving decoder


def test_the_mutator_changes_its_input():
    import random

    rng = random.Random(3)
    seed = b"\x92\x01\x90" * 10
    assert sum(fuzz.mutate(rng, seed) != seed for _ in range(100)) > 90
