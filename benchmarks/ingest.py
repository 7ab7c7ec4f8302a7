"""Scenario 2, ingest: ``cas add`` and ``cache.create`` against ``cp -r`` of the same directory.

``cas add`` (whole process, durable and ``CAS_DURABLE=0``) and ``cp -r``
(with and without ``sync``) copy the same warm directory; ``cache.create``
is timed in-process from the moment the files are in its staging directory
until they are stored, the path of a training job that saves into the
cache.  Peak memory is the ``cas add`` process's.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.harness import reset, summary, wall
from cas import Cache


def bench_ingest(work: Path, src: Path, runs: int) -> dict:
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    dst = work / "dst"
    cas_home = work / "ingest-home"
    results: dict[str, list[float]] = {"cp": [], "cp_sync": [], "cas_add": [], "cas_add_nosync": [], "api_add": []}
    peak_kib = []
    for f in (p for p in src.rglob("*") if p.is_file()):  # the page cache warm for every contender alike
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    for _ in range(runs):
        for key, cmd, env in (
            ("cp", ["cp", "-r", str(src), str(dst)], None),
            ("cp_sync", ["sh", "-c", f"cp -r '{src}' '{dst}' && sync"], None),
            ("cas_add", [sys.executable, "-m", "cas", "--home", str(cas_home), "add", str(src), "bench"], None),
            (
                "cas_add_nosync",
                [sys.executable, "-m", "cas", "--home", str(cas_home), "add", str(src), "bench"],
                {**os.environ, "CAS_DURABLE": "0"},
            ),
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
    out["cas_add_peak_rss_mb"] = max(peak_kib) / 1024
    return out


def run(work: Path, model: Path, quick: bool) -> dict:
    runs = 2 if quick else 5
    out = bench_ingest(work, model, runs)
    home = work / "create-home"
    times = []
    for _ in range(runs):
        cache = Cache(home)
        with cache.create("bench") as staging:
            for f in model.iterdir():
                shutil.copyfile(f, staging.path / f.name)
            start = time.perf_counter()
        times.append(time.perf_counter() - start)
        reset(home)
    out["api_create_store"] = summary(times)
    return out
