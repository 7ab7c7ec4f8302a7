"""Scenario 10, lifecycle: gc and du on a cache of 1,000 model versions, and the saving du reports on the
fine-tune set.

The crowded cache holds 1,000 versions of 50 models (a 256 KiB weights file
each, one config file all share), every one recorded as pulled from a
repository so that gc may evict it.  Each command is a whole ``cas``
process, timed with its peak RSS: ``cas du``, ``cas gc`` with nothing to do
(the walk every gc pays), and ``cas gc --max-size`` evicting half the
versions.  The baseline is ``du -sB1`` of the same folder: the walk any
accounting of the cache must do at least.

The saving: the fine-tune set of the dedup scenario (a base model, its
fine-tunes, a grown header, appended tensors, an fp16 copy, an unrelated
model) stored in one cache, as ``cas du`` reports it: the files' total
against the blobs stored (whole-file dedup) and the distinct chunks (what a
repository keeps before compression).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import dedup
from benchmarks.harness import REPO, reset, summary, wall
from cas import Cache

VERSIONS = 1000


def _crowded(home: Path, work: Path, versions: int) -> int:
    """A cache of ``versions`` pulled-looking versions; returns its logical bytes."""
    cache = Cache(home, durable=False)
    rng = np.random.default_rng(81)
    folder = work / "lifecycle-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden": 384, "layers": 6}))
    total = 0
    for i in range(versions):
        (folder / "model.safetensors").write_bytes(rng.bytes(256 << 10))
        info = cache.add(folder, f"model-{i % 50}:v{i:04d}")
        cache.refs.add_remote(info, "https://models.example/repo")
        total += info.size
    cache.chunk_index().close()  # its WAL files go with the connection: copies of the cache must not race them
    reset(folder)
    return total


def _timed(cmd: list[str], home: Path, runs: int) -> dict:
    """min/median/max seconds and the largest peak RSS (MB) of ``runs`` runs of a command on a copy of ``home``."""
    seconds, peaks = [], []
    for _ in range(runs):
        trial = home.with_name(home.name + "-trial")
        shutil.copytree(home, trial, symlinks=True)
        env = {**os.environ, "CAS_HOME": str(trial)}
        elapsed, rss = wall([c.replace("{home}", str(trial)) for c in cmd], env)
        seconds.append(elapsed)
        peaks.append(rss / 1024)
        reset(trial)
    return {"seconds": summary(seconds), "peak_rss_mb": max(peaks)}


def gc_scale(work: Path, quick: bool) -> dict:
    versions = 200 if quick else VERSIONS
    home = work / "lifecycle-cache"
    logical = _crowded(home, work, versions)
    on_disk = int(subprocess.run(["du", "-sB1", str(home)], capture_output=True, text=True).stdout.split()[0])
    runs = 1 if quick else 3
    cas = [sys.executable, "-m", "cas"]
    out = {
        "versions": versions,
        "logical_bytes": logical,
        "on_disk_bytes": on_disk,
        "du_baseline": _timed(["du", "-sB1", "{home}"], home, runs),
        "python_start": _timed([sys.executable, "-c", "pass"], home, runs),
        "cas_du": _timed([*cas, "du", "--json"], home, runs),
        "gc_nothing_to_do": _timed([*cas, "gc", "--json"], home, runs),
        "gc_evict_half": _timed([*cas, "gc", "--max-size", str(on_disk // 2), "--json"], home, runs),
    }
    reset(home)
    return out


def saving(work: Path, quick: bool) -> dict:
    size = (48 if quick else 256) << 20
    models = dedup.variants(work / "lifecycle-variants", size)
    home = work / "lifecycle-ft"
    cache = Cache(home, durable=False)
    for i, path in enumerate(models.values()):
        cache.add(path, f"ft:v{i}")
    report = subprocess.run([sys.executable, "-m", "cas", "du", "--json"], env={**os.environ, "CAS_HOME": str(home)},
                            cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    du = json.loads(report.stdout)
    reset(home)
    reset(work / "lifecycle-variants")
    return {"models": list(models), **{k: du[k] for k in ("logical", "stored", "saving", "distinct_chunks", "total")}}


def run(work: Path, quick: bool) -> dict:
    return {"gc": gc_scale(work, quick), "saving": saving(work, quick)}


def section(r: dict) -> str:
    g, s = r["gc"], r["saving"]
    base = g["du_baseline"]["seconds"]["median"]
    rows = []
    for key, what in (("cas_du", "cas du"), ("gc_nothing_to_do", "cas gc (nothing to remove)"),
                      ("gc_evict_half", "cas gc --max-size half (evicts ~half)"), ("du_baseline", "du -sB1"),
                      ("python_start", "python -c pass (interpreter start)")):  # fmt: skip
        t = g[key]["seconds"]
        rows.append(f"| {what} | {t['min']:.2f} / {t['median']:.2f} / {t['max']:.2f} s | "
                    f"{t['median'] / base:.1f}x | {g[key]['peak_rss_mb']:.0f} MB |")  # fmt: skip
    table = "| command | min / median / max | vs du -sB1 | peak RSS |\n|---|---|---|---|\n" + "\n".join(rows)
    mb = lambda n: f"{n / 1e6:.0f} MB"  # noqa: E731
    return (f"## 10. Lifecycle\n\nA cache of {g['versions']} versions ({mb(g['logical_bytes'])} of files, "
            f"{mb(g['on_disk_bytes'])} on disk), each command a whole process on a fresh copy:\n\n{table}\n\n"
            f"`cas du` on the fine-tune set ({len(s['models'])} models: {', '.join(s['models'])}): "
            f"{mb(s['logical'])} of files stored in {mb(s['stored'])} of blobs, a whole-file dedup saving of "
            f"{mb(max(s['saving'], 0))} ({max(s['saving'], 0) / s['logical']:.0%}: only the shared config is "
            "the same file); their distinct chunks come to "
            f"{mb(s['distinct_chunks'])} ({1 - s['distinct_chunks'] / s['logical']:.0%} saved), what a "
            "repository keeps before compression.")  # fmt: skip
