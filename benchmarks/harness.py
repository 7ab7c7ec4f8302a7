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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from cas import Cache, PushStats

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


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
print(json.dumps([elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr}")
    elapsed, rss = json.loads(out.stdout)
    return elapsed, rss


def reset(home: Path) -> None:
    """Remove a directory tree the benchmarks made, read-only snapshots included."""
    if home.exists():
        from cas.fsutil import remove_tree

        remove_tree(home)


TOKEN = "bench-token"


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


# -- processes: servers started and stopped, /proc read once --------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.Popen:
    """Start a server and wait until ``ready_url`` answers (any HTTP status counts).

    Its log goes to a file: a pipe nobody reads fills up and blocks a busy server.
    """
    fd, log = tempfile.mkstemp(prefix="cas-server-", suffix=".log")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=fd)
    os.close(fd)
    proc.log_path = Path(log)  # type: ignore[attr-defined]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {proc.log_path.read_text()}")  # type: ignore[attr-defined]
        try:
            urllib.request.urlopen(ready_url, timeout=1).read()
            return proc
        except urllib.error.HTTPError:
            return proc  # it answered (401 from a server that wants a token for reads)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{ready_url} did not come up within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it lingers; drops the log."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = getattr(proc, "log_path", None)
    if log is not None:
        log.unlink(missing_ok=True)


def start_server(repo: Path, port: int) -> subprocess.Popen:
    """`cas serve` on 127.0.0.1 that accepts pushes with ``TOKEN``."""
    cmd = [sys.executable, "-m", "cas", "serve", str(repo), "--port", str(port)]
    return start(cmd, f"http://127.0.0.1:{port}/", {**os.environ, "CAS_TOKEN": TOKEN})


class Proc(NamedTuple):
    ppid: int
    state: str  # Z: exited, not yet reaped
    cmdline: bytes


def processes() -> dict[int, Proc]:
    """Every process, from /proc (one pass; processes that exit meanwhile are skipped)."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        out[int(entry)] = Proc(int(stat[1]), stat[0], cmdline)
    return out


def descendants(root: int, table: dict[int, Proc] | None = None) -> list[int]:
    """A process and everything it started, still running."""
    table = processes() if table is None else table
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [p for p, info in table.items() if info.ppid == pid]
    return [p for p in found if p in table and table[p].state != "Z"]


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them, so sums do not double-count."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(x.split()[1]) for x in text.splitlines() if x.startswith("Pss:")), 0)


def peak_mb() -> float:
    """This process's own peak RSS (VmHWM).  Not ru_maxrss: a child started by vfork carries its parent's
    peak in ru_maxrss, so a small child of a large test process would report the parent."""
    status = Path("/proc/self/status").read_text()
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")) / 1024


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
            raise RuntimeError(f"{cmd} failed: {err.read().decode()}")
    return elapsed, peak
