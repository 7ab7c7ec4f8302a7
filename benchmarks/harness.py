"""What every benchmark scenario shares: timing processes, their memory, a `cas serve` to pull from.

Whole-process timings run the command from a small wrapper process (a
forked child's peak RSS would start at this large one's); process-tree
memory sums the PSS of a command and its descendants, because large pulls
run worker processes.  The test suite starts its servers and reads /proc
through the same helpers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cas import Cache, PushStats
from tests.support.procs import REPO, descendants, pss_kib
from tests.support.procs import start_server as _start_server

RESULTS = Path(__file__).resolve().parent / "results"


def run_json(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict[str, float]:
    """min, median and max of repeated measurements (at 21 runs or fewer a p99 would be the max)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


# A child's peak RSS starts at its parent's when forked, so the command is
# started from a small wrapper process rather than from this (large) one.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole tree: every descendant was waited for
print(json.dumps([elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime]))
"""


def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    elapsed, rss, _ = wall_cpu(cmd, env)
    return elapsed, rss


def wall_cpu(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB of the largest process) and CPU seconds (user + system of the whole
    process tree, worker processes included) of one command."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed (exit {out.returncode}): {out.stderr}")
    elapsed, rss, cpu = json.loads(out.stdout)
    return elapsed, rss, cpu


def met(ok: bool) -> str:
    """How a goal's cell reads in the report."""
    return "met" if ok else "not met"


def reset(home: Path) -> None:
    """Remove a directory tree the benchmarks made, read-only snapshots included."""
    if home.exists():
        from cas.system.dirs import remove_tree

        remove_tree(home)


TOKEN = "bench-token"


def start_server(repo: Path, port: int) -> subprocess.Popen:
    """`cas serve` on 127.0.0.1 that accepts pushes with the benchmarks' ``TOKEN``."""
    return _start_server(repo, port, TOKEN)


def push_as_owner(cache: Cache, tag: str, url: str) -> PushStats:
    """Push in-process with the benchmark servers' write token, set for this call only."""
    old = os.environ.get("CAS_TOKEN")
    os.environ["CAS_TOKEN"] = TOKEN
    try:
        return cache.push(tag, url)
    finally:
        if old is None:
            del os.environ["CAS_TOKEN"]
        else:
            os.environ["CAS_TOKEN"] = old


def timed_tree(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds of a command and the peak summed PSS (KiB) of its process tree, sampled every 20 ms.

    ``cas pull`` of a large model runs fetch worker processes beside it, so the
    peak of any one process (what getrusage reports) would understate it; the
    time comes from the process's own exit, not from the sampler.
    """
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(pss_kib(p) for p in descendants(proc.pid)))
            done.wait(0.02)

    with tempfile.TemporaryFile() as err:
        start_t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        sampler = threading.Thread(target=sample)
        sampler.start()
        proc.wait()
        elapsed = time.perf_counter() - start_t
        done.set()
        sampler.join()
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd} failed (exit {proc.returncode}): {err.read().decode()}")
    return elapsed, peak
