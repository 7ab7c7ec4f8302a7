"""Scenario soak (issue 19): several hosts at once against two repositories while processes are killed, packs
are damaged in flight and a small disk fills up; invariants checked all along and at the end.

    python -m benchmarks --only soak [--minutes N]     (default 30; or CAS_SOAK_MINUTES)

A driver thread per host runs real ``python -m cas`` processes one after another (add, push, pull, gc
with a budget, rm, rm --remote, prune, verify, export, import) and forking services that resolve through
``descriptor.Model``: a background thread starts resolving, as a preloading server does, and children forked
meanwhile each hash every file they are handed.  Hosts: two publishers (one pushing to ``cas serve``, one to
the S3 server), two "containers" sharing one cache (the second in its own PID namespace when ``unshare`` is
permitted), reading ``cas serve`` through a fault proxy, and a host whose cache is a 64 MB tmpfs smaller
than the models it pulls (skipped when mounting is not permitted).  A chaos thread SIGKILLs a random running
operation every two seconds or so; every operation has a deadline, and one that passes it is a hang.

What must hold, and is counted as a failure when it does not: every snapshot a service is handed is
complete and byte-identical to what was pushed; every version pushed and not removed pulls byte-identical
into a fresh cache; no cache nor repository ever reports damage (``verify``, ``verify --remote --deep``;
leftovers of killed processes are not damage); ``du`` is within the budget after a gc that says it fits;
nothing outlives its deadline.  Expected errors are not failures: anything from a killed process, a full
tmpfs, a version removed while it was being fetched.  Failures are bugs in cas: they are recorded with the
command and its stderr, never retried away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.harness import TOKEN, reset, start_server
from tests.support import synth
from tests.support.procs import REPO, free_port, start, stop
from tests.support.servers import S3_CREDENTIALS, make_bucket, start_s3

MODEL_BYTES = 4 << 20  # a few MB: many operations per minute, and 16 versions fill the small disk
TMPFS_MB = 64
SERVE_NAMES = ("alpha", "delta")  # published to `cas serve`
S3_NAMES = ("beta", "gamma")  # published to the S3 server
GRACE = "60s"  # prune's grace period: longer than any push or pull here
FAULTS = (("truncate", 4), ("flip", 9))  # (kind, every N-th pack request) of the two fault proxies
EXPECTED = (  # stderr of an operation that failed for a reason the soak means to cause
    (re.compile(r"No space left on device|free space on the disk"), "disk full"),
    (re.compile(r"is not in the repository"), "removed meanwhile"),
)
KEEP_MESSAGES = 5


# -- bookkeeping --------------------------------------------------------------------------------------------


class Gate:
    """Readers and one writer: operations share a cache; a verify waits until none runs and holds off the rest
    (a verify beside a running pull would judge files that are half written by design)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._writing = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass
class Ledger:
    """What was pushed where, and what was removed: the truth every pull is held to."""

    expected: dict[str, dict[str, str]] = field(default_factory=dict)  # tag -> {path: sha256}, every version made
    pushed: dict[str, str] = field(default_factory=dict)  # tag -> repository URL, push succeeded
    maybe_pushed: dict[str, str] = field(default_factory=dict)  # push killed: there or not
    removed: dict[str, float] = field(default_factory=dict)  # tag -> when its rm --remote ended (or was killed)
    exports: list[tuple[str, Path]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live(self, name: str) -> list[str]:
        with self.lock:
            return sorted(t for t in self.pushed if t.split(":")[0] == name and t not in self.removed)

    def removed_since(self, name: str, since: float) -> bool:
        with self.lock:
            return any(t.split(":")[0] == name and at >= since for t, at in self.removed.items())


@dataclass
class Tally:
    """Operations per kind and outcome, kills, and failures with their first messages."""

    outcomes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    kills: Counter = field(default_factory=Counter)  # landed, per kind
    missed: Counter = field(default_factory=Counter)  # the process had exited already
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failure_counts: Counter = field(default_factory=Counter)
    expected: Counter = field(default_factory=Counter)  # expected errors, by reason
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[kind][outcome] += 1

    def fail(self, kind: str, message: str) -> None:
        with self.lock:
            self.failure_counts[kind] += 1
            if len(self.failures[kind]) < KEEP_MESSAGES:
                self.failures[kind].append(message[-1500:])
        print(f"[soak] FAILURE {kind}: {message[-400:]}", file=sys.stderr, flush=True)


@dataclass
class Host:
    """One machine of the fleet: its cache, how it reaches each repository, what it does and its budget."""

    name: str
    home: Path
    gate: Gate
    access: dict[str, str]  # repository URL -> the URL this host reads it through (a fault proxy, or itself)
    weights: dict[str, float]  # operation kind -> how often
    budget: int | None = None  # gc --max-size
    publishes: dict[str, str] = field(default_factory=dict)  # model name -> repository URL
    wrapper: list[str] = field(default_factory=list)  # prefix of every command (unshare: a PID namespace)
    shared_cache: bool = False
    versions: Counter = field(default_factory=Counter)


@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    killed: bool
    seconds: float


# -- running operations -------------------------------------------------------------------------------------


class Runner:
    """Runs commands with deadlines, registers them for the chaos thread, and counts what happened."""

    def __init__(self, tally: Tally, env: dict[str, str], deadline: float):
        self.tally, self.env, self.deadline = tally, env, deadline
        self.running: dict[int, tuple[str, subprocess.Popen, dict]] = {}
        self.lock = threading.Lock()

    def run(self, kind: str, cmd: list[str], home: Path, killable: bool = True, extra_env: dict | None = None,
            stdin: bytes | None = None) -> Result:  # fmt: skip
        """Run ``cmd`` in its own session (so its workers and forked children can be found and stopped)."""
        env = {**self.env, "CAS_HOME": str(home), **(extra_env or {})}
        state = {"killed": False}
        start_t = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)  # fmt: skip
            if killable:
                with self.lock:
                    self.running[proc.pid] = (kind, proc, state)
            try:
                if stdin is not None:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.write(stdin)  # type: ignore[union-attr]
                        proc.stdin.close()  # type: ignore[union-attr]
                rc = self._wait(kind, cmd, proc)
            finally:
                with self.lock:
                    self.running.pop(proc.pid, None)
            self._reap_group(kind, cmd, proc.pid, err)
            out.seek(0)
            err.seek(0)
            return Result(rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                          state["killed"], time.monotonic() - start_t)  # fmt: skip

    def _wait(self, kind: str, cmd: list[str], proc: subprocess.Popen) -> int | None:
        try:
            return proc.wait(timeout=self.deadline)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait()
            self.tally.fail("hang", f"{kind}: `{shown(cmd)}` ran past its {self.deadline:.0f} s deadline")
            return None

    def _reap_group(self, kind: str, cmd: list[str], pgid: int, err: IO[bytes]) -> None:
        """Workers and forked children must end on their own once their parent has, within an operation's
        deadline (a child whose parent was killed resolves on its own: a whole pull, under the soak's load).
        Those that do not are asked for their threads' stacks (SIGUSR1: see SERVICE) before they are killed."""
        end = time.monotonic() + self.deadline
        while _group(pgid) and time.monotonic() < end:
            time.sleep(0.1)
        left = _group(pgid)
        if left:
            stacks = _stacks(pgid, err)
            _killpg(pgid)
            self.tally.fail("hang", f"{kind}: {len(left)} process(es) of `{shown(cmd)}` outlived it "
                                    f"by {self.deadline:.0f} s: {left}; their stacks: {stacks}")  # fmt: skip

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL one running operation chosen at random; a kill lands if the process was still running."""
        with self.lock:
            if not self.running:
                return
            pid = rng.choice(list(self.running))
            kind, proc, state = self.running[pid]
            alive = proc.poll() is None
            if alive:
                state["killed"] = True
                proc.send_signal(signal.SIGKILL)
        with self.tally.lock:
            (self.tally.kills if alive else self.tally.missed)[kind] += 1


def shown(cmd: list[str]) -> str:
    """A command as a message shows it: the interpreter's path and an inline script shortened."""
    return " ".join("<script>" if "\n" in a else "python" if a == sys.executable else a for a in cmd)


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            found.append(int(entry))
    return found


def _stacks(pgid: int, err: IO[bytes]) -> str:
    """What the processes of a group print on SIGUSR1 (Python's faulthandler, where they registered it)."""
    seen = err.seek(0, os.SEEK_END)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGUSR1)
    time.sleep(1.0)
    err.seek(seen)
    return err.read()[-4000:].decode(errors="replace").replace("\n", " | ")


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def cas(host: Host, *args: str) -> list[str]:
    return [*host.wrapper, sys.executable, "-m", "cas", *args]


def judge(soak: Soak, host: Host, kind: str, cmd: list[str], r: Result, name: str | None = None) -> bool:
    """Count an outcome: True when it succeeded.  An error is expected after a kill, on a full small disk, or
    when a version of ``name`` was removed while the operation ran; anything else is a failure."""
    if r.rc == 0:
        soak.tally.count(kind, "ok")
        return True
    if r.rc is None:
        soak.tally.count(kind, "hang")
        return False
    if r.killed:
        soak.tally.count(kind, "killed")
        return False
    for pattern, reason in EXPECTED:
        if pattern.search(r.err) and (reason != "removed meanwhile" or (name and soak.ledger.removed_since(
                name, time.monotonic() - r.seconds - 1))):  # fmt: skip
            if reason == "disk full" and host.name != "small":
                continue
            soak.tally.count(kind, "expected error")
            soak.tally.expected[reason] += 1
            return False
    soak.tally.count(kind, "failed")
    soak.tally.fail(kind, f"[{host.name}] `{shown(cmd)}` exit {r.rc}: {r.err.strip()[-1200:]}")
    return False


# -- operations ---------------------------------------------------------------------------------------------


def op_publish(soak: Soak, host: Host) -> None:
    """A new fine-tuned version: `cas add` then `cas push`; the ledger learns it only once the push succeeds."""
    name = soak.rng_for(host).choice(sorted(host.publishes))
    url = host.publishes[name]
    host.versions[name] += 1
    tag = f"{name}:v{host.versions[name]:05d}"
    folder = soak.make_version(name, host.versions[name])
    with soak.ledger.lock:
        soak.ledger.expected[tag] = digests(folder)
    cmd = cas(host, "add", str(folder), tag)
    if not judge(soak, host, "add", cmd, soak.runner.run("add", cmd, host.home), name):
        return
    cmd = cas(host, "push", tag, "--remote", url)
    r = soak.runner.run("push", cmd, host.home)
    ok = judge(soak, host, "push", cmd, r, name)
    with soak.ledger.lock:
        (soak.ledger.pushed if ok else soak.ledger.maybe_pushed)[tag] = url
    reset(folder)


def pick_tag(soak: Soak, host: Host) -> tuple[str, str, str] | None:
    """(tag, repository URL, URL this host reads it through) of a live version, or NAME:latest a quarter of the
    time."""
    rng = soak.rng_for(host)
    name = rng.choice(soak.names_for(host))
    live = soak.ledger.live(name)
    if not live:
        return None
    url = soak.repo_of[name]
    tag = f"{name}:latest" if rng.random() < 0.25 else rng.choice(live)
    return tag, url, host.access.get(url, url)


def op_pull(soak: Soak, host: Host) -> None:
    picked = pick_tag(soak, host)
    if picked is None:
        return
    tag, _, via = picked
    cmd = cas(host, "pull", tag, "--remote", via, "--json")
    judge(soak, host, "pull", cmd, soak.runner.run("pull", cmd, host.home), tag.split(":")[0])


SERVICE = """
import faulthandler, hashlib, json, os, random, signal, sys, threading, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # a process that hangs shows where (forked ones too)
import descriptor

tag, remote, children = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Service:
    model = descriptor.Model(tag, remote=remote)

def report():
    try:
        m = Service().model
        files = {p.relative_to(m.path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(m.path.rglob("*")) if p.is_file()}
        return {"pid": os.getpid(), "tag": m.tag, "files": files}
    except BaseException as e:
        import traceback
        frames = traceback.extract_tb(e.__traceback__)[::-1][:4]
        where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in frames)
        return {"pid": os.getpid(), "error": f"{type(e).__name__}: {e} (at {where})"}

threading.Thread(target=Service.model.resolve, daemon=True).start()  # a preloading server's first access
time.sleep(random.random() * 0.3)  # the workers fork at any moment of that resolution
r, w = os.pipe()
pids = []
for _ in range(children):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, (json.dumps(report()) + "\\n").encode())  # one small write: whole, even beside the others
        os._exit(0)
    pids.append(pid)
os.close(w)
lines = [json.dumps(report())]
with os.fdopen(r) as f:
    lines += f.read().splitlines()
for pid in pids:
    os.waitpid(pid, 0)
print("\\n".join(lines))
"""


def op_service(soak: Soak, host: Host) -> None:
    """A forking service resolves through the descriptor; every process checks the snapshot it is handed."""
    picked = pick_tag(soak, host)
    if picked is None:
        return
    tag, _, via = picked
    name = tag.split(":")[0]
    cmd = [*host.wrapper, sys.executable, "-c", SERVICE, tag, via, "2"]
    r = soak.runner.run("service", cmd, host.home)
    if not judge(soak, host, "service", cmd, r, name):
        return
    reports = [json.loads(line) for line in r.out.splitlines() if line.startswith("{")]
    if len(reports) != 3:
        soak.tally.fail("service", f"[{host.name}] {tag}: {len(reports)} of 3 processes reported: {r.out[-500:]}")
    for rep in reports:
        check_service_report(soak, host, tag, rep, r.seconds)


def check_service_report(soak: Soak, host: Host, tag: str, rep: dict, seconds: float) -> None:
    name = tag.split(":")[0]
    if "error" in rep:
        msg = rep["error"]
        if ("No space left" in msg and host.name == "small") or (
            "is not in the repository" in msg and soak.ledger.removed_since(name, time.monotonic() - seconds - 1)
        ):
            soak.tally.expected["service: " + ("disk full" if "space" in msg else "removed meanwhile")] += 1
            return
        soak.tally.fail("service", f"[{host.name}] process {rep['pid']} resolving {tag}: {msg}")
        return
    want = soak.ledger.expected.get(rep["tag"])
    if want is None:
        soak.tally.fail("service", f"[{host.name}] {tag} resolved to {rep['tag']}, a version never made")
    elif rep["files"] != want:
        got = sorted(rep["files"])
        soak.tally.fail("service", f"[{host.name}] {rep['tag']}: the snapshot handed to process {rep['pid']} "
                                   f"differs from what was pushed: {got} vs {sorted(want)}")  # fmt: skip
    else:
        soak.tally.count("snapshot checked", "ok")


def op_gc(soak: Soak, host: Host) -> None:
    """gc to the host's budget; on a host of its own, du must then be within it unless gc says what it kept."""
    budget = host.budget or 0
    cmd = cas(host, "gc", "--max-size", str(budget), "--json")
    r = soak.runner.run("gc", cmd, host.home)
    if not judge(soak, host, "gc", cmd, r) or host.shared_cache:
        return
    report = json.loads(r.out)
    if report["over_budget"]:
        if not report["kept"]:
            soak.tally.fail("budget", f"[{host.name}] gc over its budget {budget} and names nothing it kept: {report}")
        return
    cmd = cas(host, "du", "--json")
    r = soak.runner.run("du", cmd, host.home, killable=False)
    if judge(soak, host, "du", cmd, r) and json.loads(r.out)["total"] > budget:
        soak.tally.fail("budget", f"[{host.name}] du says {json.loads(r.out)['total']} bytes after a gc to "
                                  f"{budget} that said it fits ({report['size_after']})")  # fmt: skip


def op_rm_remote(soak: Soak, host: Host) -> None:
    """Remove an older version of a model this host publishes (the newest stays, so latest always resolves)."""
    rng = soak.rng_for(host)
    name = rng.choice(sorted(host.publishes))
    live = soak.ledger.live(name)
    if len(live) < 3:
        return
    tag = rng.choice(live[:-2])
    url = host.publishes[name]
    cmd = cas(host, "rm", "--remote", url, tag, "--json")
    r = soak.runner.run("rm --remote", cmd, host.home)
    ok = judge(soak, host, "rm --remote", cmd, r)
    if ok or r.killed:
        with soak.ledger.lock:
            soak.ledger.removed[tag] = time.monotonic()


def op_rm_local(soak: Soak, host: Host) -> None:
    picked = pick_tag(soak, host)
    if picked is None or picked[0].endswith(":latest"):
        return
    cmd = cas(host, "rm", picked[0], "--json")
    r = soak.runner.run("rm", cmd, host.home)
    if r.rc not in (0, None) and not r.killed and "is not in the cache" in r.err:
        soak.tally.count("rm", "not here")
        return
    judge(soak, host, "rm", cmd, r)


def op_prune(soak: Soak, host: Host) -> None:
    url = host.publishes[soak.rng_for(host).choice(sorted(host.publishes))]
    cmd = cas(host, "prune", "--remote", url, "--grace", GRACE, "--json")
    judge(soak, host, "prune", cmd, soak.runner.run("prune", cmd, host.home))


def op_verify(soak: Soak, host: Host) -> None:
    """``cas verify`` of the whole cache while none of its operations runs: leftovers of killed ones are fine,
    damage is not (repaired or not)."""
    with host.gate.exclusive():
        verify_cache(soak, host, "verify")


def verify_cache(soak: Soak, host: Host, kind: str) -> None:
    cmd = cas(host, "verify", "--json")
    r = soak.runner.run(kind, cmd, host.home, killable=False)
    try:
        report = json.loads(r.out)
    except ValueError:
        judge(soak, host, kind, cmd, r)
        return
    damage = report["missing"] + report["tampered"]
    if r.rc != 0 or damage:
        soak.tally.count(kind, "failed")
        soak.tally.fail(kind, f"[{host.name}] cas verify of {host.home}: exit {r.rc}, " + "; ".join(damage)[:1200])
    else:
        soak.tally.count(kind, "ok")


def op_export(soak: Soak, host: Host) -> None:
    picked = pick_tag(soak, host)
    if picked is None or picked[0].endswith(":latest"):
        return
    tag = picked[0]
    dest = soak.work / "exports" / f"{tag.replace(':', '-')}-{time.monotonic_ns()}.casx"
    cmd = cas(host, "export", tag, str(dest))
    r = soak.runner.run("export", cmd, host.home)
    if r.rc != 0 and "is not in the cache" in r.err and not r.killed:
        soak.tally.count("export", "not here")
        return
    if judge(soak, host, "export", cmd, r):
        with soak.ledger.lock:
            soak.ledger.exports.append((tag, dest))


def op_import(soak: Soak, host: Host) -> None:
    with soak.ledger.lock:
        if not soak.ledger.exports:
            return
        _, path = soak.rng_for(host).choice(soak.ledger.exports)
    cmd = cas(host, "import", str(path), "--json")
    judge(soak, host, "import", cmd, soak.runner.run("import", cmd, host.home))


OPERATIONS = {"publish": op_publish, "pull": op_pull, "service": op_service, "gc": op_gc,
              "rm --remote": op_rm_remote, "rm": op_rm_local, "prune": op_prune, "verify": op_verify,
              "export": op_export, "import": op_import}  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# -- the soak -----------------------------------------------------------------------------------------------


class Soak:
    """The servers, hosts, threads and ledger of one run."""

    def __init__(self, work: Path, minutes: float, seed: int = 19):
        self.work, self.minutes = work, minutes
        self.rng = random.Random(seed)
        self.ledger, self.tally = Ledger(), Tally()
        self.procs: list[subprocess.Popen] = []
        self.proxies: list[str] = []
        self.mounted: Path | None = None
        self.bases: dict[str, list] = {}
        self.repo_of: dict[str, str] = {}
        self.hosts: list[Host] = []
        self.notes: list[str] = []
        self.rngs: dict[str, random.Random] = {}
        total = minutes * 60
        self.finish_by = time.monotonic() + total
        self.final_reserve = max(35.0, 0.15 * total)
        op_deadline = min(180.0, max(45.0, 0.3 * total))
        self.env = {**os.environ, "CAS_TOKEN": TOKEN, "CAS_DURABLE": "0", "PYTHONPATH": str(REPO)}
        self.runner = Runner(self.tally, self.env, op_deadline)

    def rng_for(self, host: Host) -> random.Random:
        return self.rngs.setdefault(host.name, random.Random(f"{host.name}-{self.rng.random()}"))

    def names_for(self, host: Host) -> list[str]:
        return [n for n in (*SERVE_NAMES, *S3_NAMES) if self.repo_of[n] in host.access]

    def make_version(self, name: str, n: int) -> Path:
        """Version ``n`` of ``name``: a fine-tune of its base (a fifth of the tensors new), so pulls reuse chunks."""
        folder = self.work / "src" / name / f"v{n}"
        tensors = synth.fine_tune(self.bases[name], 0.2, seed=zlib.crc32(f"{name}:{n}".encode()))
        synth.write_model_dir(folder, tensors)
        return folder

    # setup and teardown

    def start_servers(self) -> tuple[str, str]:
        """`cas serve` (with the fault proxies in front) and the S3 server with a bucket: their URLs."""
        port = free_port()
        self.procs.append(start_server(self.work / "serve-repo", port))
        serve = f"http://127.0.0.1:{port}"
        for fault, every in FAULTS:
            p = free_port()
            cmd = [sys.executable, str(REPO / "tests" / "faultproxy.py"), serve, str(p), "--fault", fault,
                   "--every", str(every)]  # fmt: skip
            self.procs.append(start(cmd, f"http://127.0.0.1:{p}/_stats"))
            self.proxies.append(f"http://127.0.0.1:{p}")
        proc, endpoint = start_s3(self.work / "s3")
        self.procs.append(proc)
        make_bucket(endpoint, "soak")
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE"):
            self.env.pop(k, None)
        self.env.update({**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
        return serve, "s3://soak/models"

    def mount_small(self) -> Path | None:
        """A 64 MB tmpfs for the host whose models do not fit; None when mounting is not permitted here."""
        path = self.work / "small"
        path.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            self.notes.append(f"no small-disk host: mount refused ({out.stderr.strip()})")
            return None
        self.mounted = path
        return path / "cas"

    def pid_namespace(self) -> list[str]:
        """A prefix running a command in a PID namespace of its own (a container), if ``unshare`` may."""
        cmd = ["unshare", "--pid", "--fork", "--kill-child"]
        ok = shutil.which("unshare") and subprocess.run([*cmd, "true"], capture_output=True).returncode == 0
        if not ok:
            self.notes.append("the second container shares the PID namespace: unshare --pid is not permitted")
        return cmd if ok else []

    def setup(self) -> None:
        serve, s3 = self.start_servers()
        for i, name in enumerate((*SERVE_NAMES, *S3_NAMES)):
            self.bases[name] = synth.model_tensors(100 + i, MODEL_BYTES, layer_bytes=256 << 10)
            self.repo_of[name] = serve if name in SERVE_NAMES else s3
        both = {serve: serve, s3: s3}
        shared, box = self.work / "box", Gate()
        self.hosts = [
            Host("pub-serve", self.work / "pub-serve", Gate(), both, {"publish": 4, "pull": 1, "service": 1,
                 "rm --remote": 1, "prune": 0.5, "export": 1, "gc": 0.5, "verify": 0.3},
                 publishes={n: serve for n in SERVE_NAMES}),
            Host("pub-s3", self.work / "pub-s3", Gate(), both, {"publish": 4, "pull": 1, "service": 1,
                 "rm --remote": 1, "prune": 0.5, "gc": 1, "verify": 0.3}, budget=24 << 20,
                 publishes={n: s3 for n in S3_NAMES}),
            Host("box-1", shared, box, {serve: self.proxies[0], s3: s3}, {"pull": 2, "service": 3, "gc": 1,
                 "rm": 0.5, "export": 0.5, "import": 1, "verify": 0.3}, budget=32 << 20, shared_cache=True),
            Host("box-2", shared, box, {serve: self.proxies[0], s3: s3}, {"pull": 2, "service": 3, "gc": 1,
                 "rm": 0.5, "import": 0.5}, budget=32 << 20, shared_cache=True, wrapper=self.pid_namespace()),
        ]  # fmt: skip
        small = self.mount_small()
        if small is not None:
            self.hosts.append(Host("small", small, Gate(), {serve: self.proxies[1], s3: s3},
                                   {"pull": 3, "service": 2, "gc": 1, "verify": 0.3}, budget=40 << 20))  # fmt: skip
        (self.work / "exports").mkdir()

    def teardown(self) -> None:
        for proc in self.procs:
            stop(proc)
        if self.mounted is not None:
            subprocess.run(["umount", "-l", str(self.mounted)], check=False)

    # the run

    def host_loop(self, host: Host, stop_at: float) -> None:
        rng = self.rng_for(host)
        kinds, weights = zip(*host.weights.items())
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            try:
                if kind == "verify":
                    OPERATIONS[kind](self, host)
                else:
                    with host.gate.shared():
                        OPERATIONS[kind](self, host)
            except Exception as e:  # noqa: BLE001 - a driver bug is recorded as one, and the soak goes on
                self.tally.fail("driver", f"[{host.name}] {kind}: {type(e).__name__}: {e}")
                time.sleep(0.5)

    def chaos_loop(self, stop_at: float) -> None:
        rng = random.Random(self.rng.random())
        while time.monotonic() < stop_at:
            time.sleep(rng.uniform(1.0, 3.0))
            self.runner.kill_one(rng)

    def checker_loop(self, stop_at: float) -> None:
        """``verify --remote --deep`` of each repository now and then, under all the traffic."""
        while time.monotonic() < stop_at - 5:
            for url in sorted(set(self.repo_of.values())):
                self.verify_repository(url, "verify --remote (during)")
            time.sleep(min(30.0, max(5.0, stop_at - time.monotonic() - 5)))

    def verify_repository(self, url: str, kind: str) -> None:
        cmd = [sys.executable, "-m", "cas", "verify", "--remote", url, "--deep", "--json"]
        r = self.runner.run(kind, cmd, self.work / "checker", killable=False)
        try:
            report = json.loads(r.out)
        except ValueError:
            report = {"ok": False, "problems": [r.err.strip()[-800:]]}
        if r.rc == 0 and report["ok"]:
            self.tally.count(kind, "ok")
            return
        self.tally.count(kind, "failed")
        self.tally.fail(kind, f"cas verify --remote {url} --deep: exit {r.rc}: " + "; ".join(report["problems"])[:1200])

    def run(self) -> None:
        stop_at = self.finish_by - self.final_reserve
        threads = [threading.Thread(target=self.host_loop, args=(h, stop_at), name=h.name) for h in self.hosts]
        threads.append(threading.Thread(target=self.chaos_loop, args=(stop_at,), name="chaos"))
        threads.append(threading.Thread(target=self.checker_loop, args=(stop_at,), name="checker"))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.final_checks()

    # at the end

    def final_checks(self) -> None:
        """Every cache verifies and fits its budget, every repository verifies deep, every version pushed and not
        removed pulls byte-identical into a fresh cache (and nothing the soak never made is listed)."""
        for host in {h.home: h for h in self.hosts}.values():
            verify_cache(self, host, "verify (final)")
            if host.budget is not None:
                op_gc(self, Host(host.name, host.home, host.gate, host.access, {}, host.budget))
        for url in sorted(set(self.repo_of.values())):
            self.verify_repository(url, "verify --remote (final)")
            self.pull_everything(url)

    def pull_everything(self, url: str) -> None:
        listed = set(self.list_remote(url))
        with self.ledger.lock:
            must = {t for t, u in self.ledger.pushed.items() if u == url and t not in self.ledger.removed}
        for tag in sorted(must - listed):
            self.tally.fail("lost", f"{tag} was pushed to {url}, never removed, and is not listed there")
        fresh = Host("fresh", self.work / f"fresh-{zlib.crc32(url.encode())}", Gate(), {url: url}, {})
        for tag in sorted(listed):
            want = self.ledger.expected.get(tag)
            cmd = cas(fresh, "pull", tag, "--remote", url)
            r = self.runner.run("pull (final)", cmd, fresh.home, killable=False)
            if not judge(self, fresh, "pull (final)", cmd, r):
                continue
            path = subprocess.run(cas(fresh, "materialize", tag), capture_output=True, text=True, cwd=REPO,
                                  env={**self.env, "CAS_HOME": str(fresh.home)}).stdout.strip()  # fmt: skip
            got = digests(Path(path)) if path else {}
            if got != want:
                self.tally.fail("pull (final)", f"{tag} from {url} pulls different bytes than were pushed")

    def list_remote(self, url: str) -> list[str]:
        cmd = [sys.executable, "-m", "cas", "list", "--remote", url, "--json"]
        r = self.runner.run("list --remote", cmd, self.work / "checker", killable=False)
        if r.rc != 0:
            self.tally.fail("list --remote", f"{url}: {r.err.strip()[-800:]}")
            return []
        return [m["tag"] for m in json.loads(r.out)]

    def faults(self) -> dict[str, int]:
        out = {}
        for (fault, every), url in zip(FAULTS, self.proxies):
            try:
                out[f"{fault} every {every}"] = json.loads(urllib.request.urlopen(url + "/_stats", timeout=5).read())[
                    "faults"
                ]
            except OSError:
                out[f"{fault} every {every}"] = -1
        return out

    @staticmethod
    def describe(h: Host) -> dict:
        return {"budget": h.budget, "shared_cache": h.shared_cache, "pid_namespace": bool(h.wrapper)}

    def results(self, seconds: float) -> dict:
        t = self.tally
        return {
            "minutes": self.minutes,
            "seconds": seconds,
            "hosts": {h.name: self.describe(h) for h in self.hosts},
            "operations": {k: dict(v) for k, v in sorted(t.outcomes.items())},
            "kills_landed": dict(t.kills),
            "kills_missed": dict(t.missed),
            "faults_injected": self.faults(),
            "expected_errors": dict(t.expected),
            "failures": sum(t.failure_counts.values()),
            "failures_by_kind": {k: {"count": n, "first": t.failures[k]} for k, n in t.failure_counts.items()},
            "versions_pushed": len(self.ledger.pushed),
            "versions_removed": len(self.ledger.removed),
            "notes": self.notes,
        }


def minutes_default() -> float:
    return float(os.environ.get("CAS_SOAK_MINUTES", "30"))


def run(work: Path, quick: bool, minutes: float | None = None) -> dict:
    """The soak for ``minutes`` (default: ``$CAS_SOAK_MINUTES``, else 30; 2 with ``--quick``), then its checks."""
    minutes = minutes if minutes is not None else (2.0 if quick else minutes_default())
    started = time.monotonic()
    soak = Soak(work / "soak", minutes)
    soak.work.mkdir(parents=True)
    # SIGTERM (a timeout, a stopped CI job) ends it through the teardown below: servers stopped, tmpfs unmounted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        soak.setup()
        soak.run()
        return soak.results(time.monotonic() - started)  # the proxies' counts: before they stop
    finally:
        soak.teardown()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:400]


def section(r: dict) -> str:
    """The soak's table: operations per kind and outcome, kills, faults, and failures with their first messages."""
    outcomes = ("ok", "killed", "expected error", "not here", "failed", "hang")
    rows = []
    for kind, counts in r["operations"].items():
        rows.append((kind, sum(counts.values()), *(counts.get(o, 0) for o in outcomes),
                     r["kills_landed"].get(kind, 0)))  # fmt: skip
    head = ("operation", "ran", *outcomes, "kills landed")
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    landed, missed = sum(r["kills_landed"].values()), sum(r["kills_missed"].values())
    faults = ", ".join(f"{k}: {v}" for k, v in r["faults_injected"].items())
    expected = ", ".join(f"{k}: {v}" for k, v in sorted(r["expected_errors"].items())) or "none"
    text = (f"## Soak\n\n{r['minutes']:g} minutes ({r['seconds']:.0f} s with setup and final checks), hosts: "
            + ", ".join(f"{h}{' (shared cache)' if v['shared_cache'] else ''}"
                        f"{' (own PID namespace)' if v['pid_namespace'] else ''}"
                        f"{' (budget ' + str(v['budget'] >> 20) + ' MiB)' if v['budget'] else ''}"
                        for h, v in r["hosts"].items())
            + f". {r['versions_pushed']} versions pushed, {r['versions_removed']} removed.\n\n"
            + "\n".join(table)
            + f"\n\nSIGKILLs landed: {landed} (missed, the process had ended: {missed}). Faults injected: {faults}. "
            f"Expected errors: {expected}.\n\n**Failures: {r['failures']}**")  # fmt: skip
    for kind, f in r["failures_by_kind"].items():
        text += f"\n\n- {kind}: {f['count']}" + "".join(f"\n  - {_cell(m)}" for m in f["first"])
    for note in r["notes"]:
        text += f"\n\nNote: {note}"
    return text
