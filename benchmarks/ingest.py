"""Scenario 2, ingest: ``cas add`` and ``cache.create`` against ``cp -r`` of the same files, in three shapes.

Shapes (issue 14, goal 1): one large file of random bytes (800 MB; quick
32 MB), the synthetic multi-file safetensors model, and 10,000 small files
of 1-64 KiB random bytes in 20 folders (quick: 200).  For each, ``cas add``
(whole process, durable and ``CAS_DURABLE=0``) and ``cp -r`` (with and
without ``sync``) copy the same warm directory, interleaved run by run so
that the machine's load falls on all alike; ``cache.create`` is timed
in-process from the moment the files are in its staging directory until
they are stored (the path of a training job that saves into the cache),
against ``cp -r`` of the same files.  Peak memory is the ``cas add``
process's.  Goals: add at least 0.8x its ``cp`` baseline, create at least
1x ``cp -r``, peak memory under 300 MB.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path

from benchmarks.harness import reset, summary, wall
from cas import Cache

ADD_GOAL, CREATE_GOAL, MEMORY_GOAL_MB = 0.8, 1.0, 300
LABELS = {"large": "one large file", "model": "synthetic safetensors model", "small": "small files"}


def large_file(work: Path, size: int) -> Path:
    """A folder holding one file of ``size`` random bytes (a single-file checkpoint that does not compress)."""
    d = work / "ingest-large"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "model.bin", "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    return d


def small_files(work: Path, count: int) -> Path:
    """``count`` files of 1-64 KiB random bytes in 20 folders (configs, tokenizers, many shards)."""
    d = work / "ingest-small"
    rng = random.Random(14)
    for i in range(count):
        p = d / f"d{i % 20:02d}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(rng.randint(1024, 65536)))
    return d


def _warm(src: Path) -> int:
    """Read every file once (the page cache warm for every contender alike); the bytes under ``src``."""
    size = 0
    for f in (p for p in src.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                size += len(block)
    return size


def bench_ingest(work: Path, src: Path, runs: int) -> dict:
    size = _warm(src)
    dst = work / "dst"
    cas_home = work / "ingest-home"
    results: dict[str, list[float]] = {"cp": [], "cp_sync": [], "cas_add": [], "cas_add_nosync": [], "api_add": []}
    peak_kib = []
    add = [sys.executable, "-m", "cas", "--home", str(cas_home), "add", str(src), "bench"]
    for _ in range(runs):
        for key, cmd, env in (
            ("cp", ["cp", "-r", str(src), str(dst)], None),
            ("cas_add_nosync", add, {**os.environ, "CAS_DURABLE": "0"}),
            ("cp_sync", ["sh", "-c", f"cp -r '{src}' '{dst}' && sync"], None),
            ("cas_add", add, None),
        ):
            shutil.rmtree(dst, ignore_errors=True)
            reset(cas_home)
            os.sync()
            elapsed, rss = wall(cmd, env)
            results[key].append(elapsed)
            if key.startswith("cas"):
                peak_kib.append(rss)
        reset(cas_home)
        os.sync()
        start = time.perf_counter()
        Cache(cas_home).add(src, "bench")
        results["api_add"].append(time.perf_counter() - start)
    reset(cas_home)
    shutil.rmtree(dst, ignore_errors=True)
    out = {k: summary(v) for k, v in results.items()}
    out["bytes"] = size
    out["files"] = sum(1 for p in src.rglob("*") if p.is_file())
    out["cas_add_peak_rss_mb"] = max(peak_kib) / 1024
    return out


def bench_create(work: Path, src: Path, runs: int) -> dict[str, float]:
    """``cache.create``: the files written into staging (not timed), then stored by moving them in (timed)."""
    home = work / "create-home"
    times = []
    for _ in range(runs):
        cache = Cache(home)
        with cache.create("bench") as staging:
            shutil.copytree(src, staging.path, dirs_exist_ok=True)
            start = time.perf_counter()
        times.append(time.perf_counter() - start)
        reset(home)
    return summary(times)


def run(work: Path, model: Path, quick: bool) -> dict:
    runs = 2 if quick else 3
    sources = {
        "large": large_file(work, (32 if quick else 800) << 20),
        "model": model,
        "small": small_files(work, 200 if quick else 10_000),
    }
    shapes = {}
    for name, src in sources.items():
        shapes[name] = bench_ingest(work, src, runs)
        shapes[name]["api_create_store"] = bench_create(work, src, runs)
        if src != model:
            reset(src)
    out = dict(shapes["model"])  # the model's figures at the top level, as before the shapes
    out["shapes"] = shapes
    return out


def _ratio(base: dict, ours: dict) -> float:
    return base["median"] / ours["median"]


def _met(ratio: float, goal: float) -> str:
    return "met" if ratio >= goal else "not met"


def headline_rows(ing: dict) -> list[tuple[str, str, str, str, str]]:
    """For each shape: add (durable, not durable) and create against their copy baselines, met or not met."""
    rows = []
    for name, s in ing.get("shapes", {"model": ing}).items():
        mb = s["bytes"] / 1e6
        what = f"{LABELS.get(name, name)}, {mb:.0f} MB" + (f" in {s['files']:,} files" if s.get("files", 1) > 2 else "")
        for ours, theirs, label, base, goal in (
            ("cas_add", "cp_sync", "`cas add`, durable", "`cp -r && sync`", ADD_GOAL),
            ("cas_add_nosync", "cp", "`cas add`, `CAS_DURABLE=0`", "`cp -r`", ADD_GOAL),
            ("api_create_store", "cp", "`cache.create` (moved in)", "`cp -r`", CREATE_GOAL),
        ):
            if ours not in s:
                continue
            ratio = _ratio(s[theirs], s[ours])
            rows.append((f"{label}: {what}", f"{_seconds(s[ours])}, {mb / s[ours]['median']:.0f} MB/s",
                         f"{base} {_seconds(s[theirs])}", f"{ratio:.2f}x",
                         f"≥ {goal:g}x: {_met(ratio, goal)}"))  # fmt: skip
    peak = max(s["cas_add_peak_rss_mb"] for s in ing.get("shapes", {"model": ing}).values())
    rows.append(("`cas add` peak memory (every shape)", f"{peak:.0f} MB", "-", "-",
                 f"< {MEMORY_GOAL_MB} MB: {_met(MEMORY_GOAL_MB - peak, 0)}"))  # fmt: skip
    return rows


def _seconds(t: dict) -> str:
    return f"{t['median']:.2f} s ({t['min']:.2f}-{t['max']:.2f})"


def section(ing: dict) -> str:
    names = {
        "cp": "`cp -r`",
        "cp_sync": "`cp -r && sync`",
        "cas_add_nosync": "`cas add`, `CAS_DURABLE=0`",
        "cas_add": "`cas add` (durable)",
        "api_add": "`Cache.add` in-process (durable)",
        "api_create_store": "`cache.create` (store from staging)",
    }
    rows = []
    for shape, s in ing.get("shapes", {"model": ing}).items():
        mb = s["bytes"] / 1e6
        for k, label in names.items():
            if k in s:
                v = s[k]
                n = s.get("files", 1)
                rows.append((f"{LABELS.get(shape, shape)} ({mb:.0f} MB, {n:,} file{'s' if n != 1 else ''})", label,
                             f"{v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f} s",
                             f"{mb / v['median']:.0f} MB/s"))  # fmt: skip
        peak = f"{s['cas_add_peak_rss_mb']:.0f} MB"
        rows.append((LABELS.get(shape, shape), "`cas add` peak memory", peak, "-"))
    header = ("shape", "what", "min / median / max", "throughput (median)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return ("## 2. Ingest\n\nStoring three shapes of model: `cas add` reads the copy the kernel made "
            "(`copy_file_range`), chunks and hashes every byte and flushes it before naming the blob; `cp -r` only "
            "copies. Whole processes, interleaved run by run; `cache.create` in-process from staging.\n\n"
            + "\n".join(lines))  # fmt: skip
