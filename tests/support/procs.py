"""Processes and servers for the tests, the benchmarks and the demo: start a server and wait until it
answers, stop it, and read /proc once for a process tree and its memory.

A server's log goes to a file: a pipe nobody reads fills up and blocks a busy server (it did: a busy
``cas serve`` stopped mid-request).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]


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
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = getattr(proc, "log_path", None)
    if log is not None:
        log.unlink(missing_ok=True)


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


def start_server(repo: Path, port: int, token: str) -> subprocess.Popen:
    """`cas serve` on 127.0.0.1 that accepts pushes with ``token``."""
    cmd = [sys.executable, "-m", "cas", "serve", str(repo), "--port", str(port)]
    return start(cmd, f"http://127.0.0.1:{port}/", {**os.environ, "CAS_TOKEN": token})
