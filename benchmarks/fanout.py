"""Scenario 8, fan-out: N hosts pull the same cold model at the same moment from one repository.

Each host is a cache of its own (a separate ``CAS_HOME``, as N GPU hosts
would have) on this machine; N = 1, 4, 8, 16 (quick: 1, 2) start together
at a barrier, from (a) ``cas serve``, (b) nginx serving the same folder,
(c) an S3-compatible server (moto) and (d) the CNCF distribution registry holding the same model: once as ``cas
pull``, once as N services whose descriptor pulls on first access.
Reported: the time until all hold the model, the bytes sent over loopback
(the servers' answers, plus the requests' few bytes; the kernel's own
counter), and the CPU the server's processes spent.

On one machine the N hosts share its two cores, so time grows with N for
that reason as well; the server's bytes and CPU are what a fleet meets.
Fetch worker processes are off (``CAS_PULL_PROCESSES=0``): 16 hosts with a
worker each would only fight over the same two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import push_as_owner, reset, start_server, summary
from cas import Cache
from tests.support import synth
from tests.support.procs import REPO, descendants, free_port, stop
from tests.support.registry import start_registry
from tests.support.servers import S3_CREDENTIALS, make_bucket, start_nginx, start_s3

GATE = 'import sys; print("ready", flush=True); sys.stdin.readline()\n'
PULL = GATE + "from cas.cli import main\nsys.exit(main(sys.argv[1:]))"
SERVICE = GATE + ("import descriptor\nclass Service:\n    model = descriptor.Model('m:v1')\nService().model.path")


def run(work: Path, quick: bool) -> dict:
    counts = [1, 2] if quick else [1, 4, 8, 16]
    model = synth.write_model_dir(work / "fan-model", synth.model_tensors(91, (24 if quick else 128) << 20))
    src = Cache(work / "fan-src", durable=False)
    src.add(model, "m:v1")
    folder = work / "fan-repo"
    port = free_port()
    served = start_server(folder, port)
    nginx, nginx_url = start_nginx(folder, work / "fan-nginx")
    s3_server, endpoint = start_s3(work / "fan-s3")
    s3_env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    (work / "fan-registry").mkdir()
    registry, registry_url, _ = start_registry(work / "fan-registry")
    oci = f"oci://{registry_url.removeprefix('http://')}/fanout"
    try:
        push_as_owner(src, "m:v1", f"http://127.0.0.1:{port}")
        make_bucket(endpoint, "fanout")
        _push_s3(src, s3_env)
        src.push("m:v1", oci)
        servers = {
            "cas serve": (f"http://127.0.0.1:{port}", served, {}),
            "nginx": (nginx_url, nginx, {}),
            "S3 (moto)": ("s3://fanout/repo", s3_server, s3_env),
            "registry (distribution)": (oci, registry, {}),
        }
        out: dict = {"model_bytes": src.get("m:v1").size, "counts": counts, "servers": {}}
        headline = {1, max(counts)}  # measured 3 times (full mode), for the headline's spread
        for name, (url, proc, env) in servers.items():
            out["servers"][name] = {
                way: {n: _repeated(work / "fan-hosts", url, proc, env, n, way,
                                   3 if not quick and way == "cas pull" and n in headline else 1) for n in counts}
                for way in ("cas pull", "descriptor")
            }  # fmt: skip
        return out
    finally:
        for proc in (served, nginx, s3_server, registry):
            stop(proc)
        for d in (model, work / "fan-src", folder, work / "fan-hosts", work / "fan-registry"):
            reset(d)


def _push_s3(src: Cache, s3_env: dict[str, str]) -> None:
    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)
    try:
        src.push("m:v1", "s3://fanout/repo")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _repeated(hosts: Path, url: str, server: subprocess.Popen, extra: dict[str, str], n: int, way: str,
              runs: int) -> dict:  # fmt: skip
    """``_fan_out`` ``runs`` times: the run of median time (its bytes and CPU) and the spread of the times."""
    got = sorted((_fan_out(hosts, url, server, extra, n, way) for _ in range(runs)), key=lambda r: r["seconds"])
    return {**got[len(got) // 2], "seconds_runs": summary([r["seconds"] for r in got])}


def _fan_out(hosts: Path, url: str, server: subprocess.Popen, extra: dict[str, str], n: int, way: str) -> dict:
    """N hosts at once; the time until the last holds the model, loopback bytes and server CPU meanwhile."""
    env = {**os.environ, **extra, "CAS_REMOTE": url, "CAS_PULL_PROCESSES": "0", "CAS_DURABLE": "0"}
    env.pop("CAS_TOKEN", None)
    args = ["-c", PULL, "pull", "m:v1"] if way == "cas pull" else ["-c", SERVICE]
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env={**env, "CAS_HOME": str(hosts / str(i))},
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))  # fmt: skip
    for p in procs:
        if p.stdout.readline() != "ready\n":  # type: ignore[union-attr]
            raise RuntimeError(f"a {way} host failed to start")
    bytes_before, cpu_before = _loopback_tx(), _cpu(server.pid)
    start = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"{n} hosts pulling through {way} from {url}: exit codes {codes}")
    result = {"seconds": elapsed, "loopback_bytes": _loopback_tx() - bytes_before,
              "server_cpu_s": _cpu(server.pid) - cpu_before}  # fmt: skip
    reset(hosts)
    return result


def _loopback_tx() -> int:
    """Bytes sent over the loopback interface so far (the kernel's counter, /proc/net/dev)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) spent so far by a process and everything it started."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- how the report shows it ----------------------------------------------------------------------------


def headline_rows(f: dict) -> list[tuple[str, str, str, str, str]]:
    """For each server: the time for the most hosts against one host alone."""
    n = max(f["counts"])
    rows = []
    for name, ways in f["servers"].items():
        one, many = ways["cas pull"][1], ways["cas pull"][n]
        rows.append((f"fan-out: {n} hosts pull one cold {f['model_bytes'] / 1e6:.0f} MB model from {name}",
                     _seconds(many), f"one host {_seconds(one)}", f"{many['seconds'] / one['seconds']:.1f}x",
                     f"≤ {n}x (linear)"))  # fmt: skip
    return rows


def _seconds(v: dict) -> str:
    """The median time, with min-max where it was measured more than once."""
    s = v.get("seconds_runs")
    spread = f" ({s['min']:.2f}-{s['max']:.2f})" if s and s["n"] > 1 else ""
    return f"{v['seconds']:.2f} s{spread}"


def section(f: dict) -> str:
    rows = []
    for name, ways in f["servers"].items():
        for way, by_n in ways.items():
            for n, v in by_n.items():
                rows.append((name, way, n, f"{v['seconds']:.2f} s", f"{v['loopback_bytes'] / 1e6:.0f} MB",
                             f"{v['server_cpu_s']:.2f} s"))  # fmt: skip
    header = ("server", "hosts pull by", "hosts", "until all hold it", "bytes on loopback", "server CPU")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return ("## 8. Fan-out\n\nN hosts (separate caches on this machine) pull the same cold "
            f"{f['model_bytes'] / 1e6:.0f} MB model at the same moment, as `cas pull` and as services whose "
            "descriptor pulls on first access. The hosts share this machine's cores, so time grows with N for that "
            "reason too; bytes (the kernel's loopback counter) and the server's CPU are what a fleet would meet.\n\n"
            + "\n".join(lines) + "\n\n![fan-out](fanout.png)")  # fmt: skip


def plot(f: dict, out: Path, plt) -> str:  # plt: matplotlib.pyplot, imported by the caller
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, ways) in enumerate(f["servers"].items()):
        color = f"C{i}"  # one colour a server: solid for cas pull, dashed for the descriptor
        for way, style in (("cas pull", "o-"), ("descriptor", "s--")):
            ns = sorted(ways[way])
            axes[0].plot(ns, [ways[way][n]["seconds"] for n in ns], style, color=color, label=f"{name}, {way}")
        ns = sorted(ways["cas pull"])
        axes[1].plot(ns, [ways["cas pull"][n]["server_cpu_s"] for n in ns], "o-", color=color, label=name)
    axes[0].set(xlabel="hosts pulling at once", ylabel="seconds until all hold it", title="Fan-out: time")
    axes[1].set(xlabel="hosts pulling at once", ylabel="server CPU seconds", title="Fan-out: server CPU")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.savefig(out / "fanout.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "fanout.png"
