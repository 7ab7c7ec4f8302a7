"""The benchmark suite's quick mode as a smoke test: it runs end to end and writes its report (no time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO


def test_quick_benchmarks_write_a_report_with_every_scenario(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for scenario in ("latency", "ingest", "pull", "dedup", "codec", "scale", "racing", "fanout", "registry"):
        assert scenario in results, scenario
    report = (tmp_path / "report.md").read_text()
    assert "## Headline" in report and "## 7. Concurrency" in report
    assert f"{results['machine']['cpus']} CPUs" in report
    assert sorted(results["plots"]) == ["dedup.png", "fanout.png", "pull.png", "scale.png"]
    for png in results["plots"]:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tuned, other = results["dedup"]["10% of tensors changed"], results["dedup"]["unrelated model"]
    assert 0 < tuned["raw_moved"] < 0.2 * tuned["whole_file_bytes"]  # chunks, not files, cross the network
    assert other["raw_moved"] > 0.9 * other["size"]  # nothing to share with an unrelated model
    cold = results["latency"]["cold_pull"]
    assert {"seconds", "in_loop_seconds", "aresolve_seconds"} <= set(cold)  # first access inside a running loop
    assert "inside a running loop" in report
    racing = results["racing"]
    assert racing["counts"]
    assert racing["pack_bytes_one_pull"] == racing["pack_bytes_pushed"]  # one service fetches the packs once
    assert all(v["pack_bytes"] == racing["pack_bytes_one_pull"] for v in racing["counts"].values())
    again = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "codec", "--out", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert rerun["rerun"] == ["codec"] and rerun["racing"] == racing  # one scenario rerun, the others kept
    assert "## 7. Concurrency" in (tmp_path / "report.md").read_text()


def test_unknown_scenarios_are_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "latency,warp", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2
    assert "unknown scenario(s) warp" in out.stderr
    assert not (tmp_path / "report.md").exists()


def test_a_second_run_says_which_headline_ratios_moved_more_than_20_percent(tmp_path):
    from benchmarks import report

    racing = {
        "counts": {4: {"pack_bytes": 130, "seconds": 1.0}},
        "pack_bytes_one_pull": 100,
        "pack_bytes_pushed": 100,
        "model_bytes": 100,
    }
    first = report.render({"machine": report.machine(), "racing": racing}, "full", 1.0)
    assert report.previous_ratios(first) == {"4 processes racing on a cold model: bytes fetched": 1.3}
    racing["counts"][4]["pack_bytes"] = 100  # 1.30x -> 1.00x: moved 23%
    again = report.render({"machine": report.machine(), "racing": racing}, "full", 1.0, report.previous_ratios(first))
    assert "Moved more than 20% since the previous report:\n\n- 4 processes racing on a cold model: bytes fetched: " \
           "1.3x → 1x (-23%)" in again  # fmt: skip


def test_every_mutant_of_the_mutation_job_still_finds_its_line_and_names_tests_that_exist():
    """The mutation job edits lines by their text: a refactor that moves one would quietly shrink the campaign
    (the job reports it, but only when someone runs it); each mutant must also parse, and name real tests."""
    import ast

    from benchmarks.mutation import MUTANTS

    for m in MUTANTS:
        source = (REPO / m.path).read_text()
        assert source.count(m.old) == 1, f"{m.name}: {m.path} holds its line {source.count(m.old)} times"
        ast.parse(source.replace(m.old, m.new))  # a mutant that does not parse is killed by the compiler
        for test in m.tests:
            path, _, name = test.partition("::")
            assert (REPO / path).is_file(), f"{m.name}: no {path}"
            assert not name or f"def {name}(" in (REPO / path).read_text(), f"{m.name}: no test {name} in {path}"
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
