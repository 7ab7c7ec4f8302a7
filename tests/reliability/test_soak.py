"""The soak of issue 19, two minutes of it: hosts pushing, pulling, resolving through forking services, running
gc, rm and prune against `cas serve` and an S3 server while operations are SIGKILLed, packs damaged in flight and
a small disk fills up (``benchmarks/soak.py`` says what runs and what must hold).

``CAS_SOAK_MINUTES`` sets the length (2 here; ``python -m benchmarks --only soak`` runs 30 by default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import REPO, require

pytestmark = pytest.mark.reliability
MINUTES = float(os.environ.get("CAS_SOAK_MINUTES", "2"))
KINDS = ("add", "push", "pull", "service", "gc", "rm", "rm --remote", "prune", "export", "import", "verify",
         "verify --remote (during)", "verify (final)", "verify --remote (final)", "pull (final)")  # fmt: skip


def test_soak_finds_no_failure(tmp_path):
    require("moto.server")
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "soak", "--minutes", str(MINUTES), "--out",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=MINUTES * 60 + 300)  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert "soak" in results, out.stderr[-3000:]
    soak = results["soak"]
    ran = {kind for kind, counts in soak["operations"].items() if sum(counts.values())}
    assert not set(KINDS) - ran, f"never ran: {sorted(set(KINDS) - ran)}"
    assert sum(soak["kills_landed"].values()) > 0
    assert soak["failures"] == 0, json.dumps(soak["failures_by_kind"], indent=1)
    assert out.returncode == 0, out.stderr[-3000:]
