"""Scenario 12, signed models: what a trust policy costs a host and a publisher, against the same work unsigned.

A `cas serve` on 127.0.0.1 set up for signing (a root, an online key, a role
for ``m*``); MiniLM and a 1 MB model pushed and signed.  Measured, runs
interleaved so both sides see the same machine:

- a host's warm first access through the descriptor in a fresh process, with
  ``CAS_TRUST`` and without: in-process (import to path) and whole process;
- ``cas pull`` whole process into a clean cache, with the policy and without,
  for both models (the extra should not grow with the model), and the
  requests each makes, counted by a proxy in front of the server;
- a later ``cas pull`` of the 1 MB model on a host that pulled another signed
  model before (its trusted root and state are there: the usual pull);
- ``cas push`` of a new version whole process, with ``--sign`` and without.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from benchmarks.harness import TOKEN, met, reset, run_json, start_server, summary, wall
from cas import Cache, SigningKey, TrustPolicy
from cas.repo.repository import run_with_repository
from cas.trust import publish
from cas.trust.keys import generate
from cas.trust.policy import Anchor
from tests.support.procs import REPO, free_port, start, stop

WARM = """
import json, time
t0 = time.perf_counter()
import descriptor
class Service:
    model = descriptor.Model("minilm:v1")
path = Service().model.path
print(json.dumps({"us": (time.perf_counter() - t0) * 1e6}))
"""
PROCESS = "import descriptor\nclass S:\n    m = descriptor.Model('minilm:v1')\nS().m.path"


def run(work: Path, minilm: Path, quick: bool) -> dict:
    runs = 2 if quick else 9
    repo, keys = work / "trust-repo", {n: generate(work / f"{n}.key") for n in ("root", "online", "team")}
    server = start_server(repo, port := free_port())
    url = f"http://127.0.0.1:{port}"
    try:
        policy = _set_up(work, url, keys)
        small = work / "small"
        small.mkdir()
        (small / "model.bin").write_bytes(os.urandom(1 << 20))
        publisher = Cache(work / "publisher", durable=False)
        for tag, model in (("minilm:v1", minilm), ("m1:v1", small), ("m2:v1", small)):
            publisher.add(model, tag)
            _as_owner(lambda: publisher.push(tag, url, sign=[keys["team"], keys["online"]]))  # noqa: B023
        out = {"pull": {n: _pulls(work, url, policy, tag, runs) for n, tag in (("minilm", "minilm:v1"),
                                                                              ("1mb", "m1:v1"))},
               "later_pull": _later_pulls(work, url, policy, runs),
               "requests": _requests(work, url, policy), "warm": _warm(work, url, policy, 3 if quick else 21),
               "push": _pushes(work, url, publisher, small, runs)}  # fmt: skip
        out["model_bytes"] = publisher.get("minilm:v1").size
        return out
    finally:
        stop(server)
        reset(work / "trust-hosts")


def _set_up(work: Path, url: str, keys: dict[str, SigningKey]) -> Path:
    async def init(repo):
        anchor = await publish.init(repo, [keys["root"]], [keys["online"].public], online_signers=[keys["online"]])
        await publish.set_role(repo, "team", ["m*"], [keys["team"].public], 1, [keys["root"], keys["online"]])
        return anchor

    anchor = _as_owner(lambda: run_with_repository(init, url))
    policy = work / "trust.json"
    policy.write_text(TrustPolicy((Anchor(url, anchor),)).to_json())
    return policy


def _as_owner(work):
    old = os.environ.get("CAS_TOKEN")
    os.environ["CAS_TOKEN"] = TOKEN
    try:
        return work()
    finally:
        if old is None:
            del os.environ["CAS_TOKEN"]
        else:
            os.environ["CAS_TOKEN"] = old


def _env(home: Path, policy: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CAS_TRUST"}
    return {**env, "CAS_HOME": str(home), **({"CAS_TRUST": str(policy)} if policy else {})}


def _pulls(work: Path, url: str, policy: Path, tag: str, runs: int) -> dict:
    """Whole-process pulls into clean caches, unsigned and with the policy in turn."""
    times: dict[str, list[float]] = {"plain": [], "policy": []}
    for i in range(runs):
        for side, pol in (("plain", None), ("policy", policy)):
            home = work / "trust-hosts" / f"{side}-{tag}-{i}"
            times[side].append(wall([sys.executable, "-m", "cas", "pull", tag, "--remote", url], _env(home, pol))[0])
            reset(home)
    return {k: summary(v) for k, v in times.items()}


def _later_pulls(work: Path, url: str, policy: Path, runs: int) -> dict:
    """Whole-process pulls of the 1 MB model by hosts that pulled another signed model before."""
    times: dict[str, list[float]] = {"plain": [], "policy": []}
    for i in range(runs):
        for side, pol in (("plain", None), ("policy", policy)):
            home = work / "trust-hosts" / f"later-{side}-{i}"
            subprocess.run([sys.executable, "-m", "cas", "pull", "m2:v1", "--remote", url], env=_env(home, pol),
                           check=True, capture_output=True, cwd=REPO)  # fmt: skip
            times[side].append(wall([sys.executable, "-m", "cas", "pull", "m1:v1", "--remote", url],
                                    _env(home, pol))[0])  # fmt: skip
            reset(home)
    return {k: summary(v) for k, v in times.items()}


def _requests(work: Path, url: str, policy: Path) -> dict:
    """Requests one pull makes, counted by a proxy in front of the server, and those a second pull makes."""
    out = {}
    for side, pol in (("plain", None), ("policy", policy)):
        port = free_port()
        proxy = start([sys.executable, str(REPO / "tests" / "faultproxy.py"), url, str(port)],
                      f"http://127.0.0.1:{port}/_stats")  # fmt: skip
        try:
            home = work / "trust-hosts" / f"count-{side}"
            counts = []
            for tag in ("minilm:v1", "m1:v1"):
                subprocess.run([sys.executable, "-m", "cas", "pull", tag, "--remote", f"http://127.0.0.1:{port}"],
                               env=_env(home, pol), check=True, capture_output=True, cwd=REPO)  # fmt: skip
                counts.append(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats").read())["requests"])
            out[side] = {"first": counts[0], "second": counts[1] - counts[0]}
        finally:
            stop(proxy)
    return out


def _warm(work: Path, url: str, policy: Path, runs: int) -> dict:
    """A model pulled under the policy, then resolved offline by fresh processes, with the policy and without."""
    home = work / "trust-hosts" / "warm"
    host = Cache(home, trust=policy)
    host.materialize(host.pull("minilm:v1", url).info)
    res: dict[str, dict[str, list[float]]] = {s: {"us": [], "process_s": []} for s in ("plain", "policy")}
    for _ in range(runs):
        for side, pol in (("plain", None), ("policy", policy)):
            env = {**_env(home, pol), "CAS_OFFLINE": "1"}
            res[side]["us"].append(run_json(WARM, env)["us"])
            res[side]["process_s"].append(wall([sys.executable, "-c", PROCESS], env)[0])
    return {s: {k: summary(v) for k, v in d.items()} for s, d in res.items()}


def _pushes(work: Path, url: str, publisher: Cache, small: Path, runs: int) -> dict:
    """``cas push`` of a new version (its bytes are there already: the push itself is small), signed or not."""
    times: dict[str, list[float]] = {"plain": [], "signed": []}
    env = {**_env(publisher.root, None), "CAS_TOKEN": TOKEN}
    for i in range(runs):
        for side in times:
            tag = f"m1:{side}{i}"
            publisher.add(small, tag)
            sign = ["--sign", str(work / "team.key"), "--sign", str(work / "online.key")] if side == "signed" else []
            times[side].append(wall([sys.executable, "-m", "cas", "push", tag, "--remote", url, *sign], env)[0])
    return {k: summary(v) for k, v in times.items()}


def headline_rows(t: dict) -> list[tuple[str, str, str, str, str]]:
    warm, pull, push = t["warm"], t["pull"]["minilm"], t["push"]
    w = warm["policy"]["process_s"]["median"] / warm["plain"]["process_s"]["median"]
    extra_ms = (pull["policy"]["median"] - pull["plain"]["median"]) * 1e3
    sign_ms = (push["signed"]["median"] - push["plain"]["median"]) * 1e3
    later_ms = (t["later_pull"]["policy"]["median"] - t["later_pull"]["plain"]["median"]) * 1e3
    req = t["requests"]
    return [
        ("warm first access with a trust policy, whole process", f"{warm['policy']['process_s']['median']:.3f} s",
         f"without {warm['plain']['process_s']['median']:.3f} s", f"{w:.3f}x", f"≤ 1.05x: {met(w <= 1.05)}"),
        ("`cas pull` MiniLM with a trust policy: extra time, whole process", f"{extra_ms:+.0f} ms",
         f"unsigned {pull['plain']['median']:.2f} s", "-", f"≤ 20 ms: {met(extra_ms <= 20)}"),
        ("a later `cas pull` with a trust policy: extra time, whole process", f"{later_ms:+.0f} ms",
         f"unsigned {t['later_pull']['plain']['median']:.2f} s", "-", f"≤ 20 ms: {met(later_ms <= 20)}"),
        ("`cas pull` with a trust policy: extra requests", str(req["policy"]["first"] - req["plain"]["first"]),
         f"unsigned {req['plain']['first']}", "-",
         f"≤ 3: {met(req['policy']['first'] - req['plain']['first'] <= 3)}"),
        ("`cas push --sign` of a new version: extra time, whole process", f"{sign_ms:+.0f} ms",
         f"unsigned {push['plain']['median']:.2f} s", "-", f"≤ 50 ms: {met(sign_ms <= 50)}"),
    ]  # fmt: skip


def section(t: dict) -> str:
    rows = []
    for name, p in t["pull"].items():
        rows.append((f"`cas pull` {name}, whole process", _s(p["plain"]), _s(p["policy"]),
                     f"{(p['policy']['median'] - p['plain']['median']) * 1e3:+.0f} ms"))  # fmt: skip
    later = t["later_pull"]
    extra = f"{(later['policy']['median'] - later['plain']['median']) * 1e3:+.0f} ms"
    rows.append(("later `cas pull` 1mb (a signed model pulled before)", _s(later["plain"]), _s(later["policy"]), extra))
    for label, key in (("first", "first"), ("second, another model", "second")):
        r = t["requests"]
        rows.append((f"requests of a pull ({label})", str(r["plain"][key]), str(r["policy"][key]),
                     f"{r['policy'][key] - r['plain'][key]:+d}"))  # fmt: skip
    w = t["warm"]
    rows.append(("warm first access, in process (import to path)", f"{w['plain']['us']['median'] / 1e3:.1f} ms",
                 f"{w['policy']['us']['median'] / 1e3:.1f} ms",
                 f"{(w['policy']['us']['median'] - w['plain']['us']['median']) / 1e3:+.1f} ms"))  # fmt: skip
    rows.append(("warm first access, whole process", _s(w["plain"]["process_s"]), _s(w["policy"]["process_s"]),
                 f"{w['policy']['process_s']['median'] / w['plain']['process_s']['median']:.3f}x"))  # fmt: skip
    p = t["push"]
    rows.append(("`cas push` of a new version, whole process", _s(p["plain"]), _s(p["signed"]),
                 f"{(p['signed']['median'] - p['plain']['median']) * 1e3:+.0f} ms"))  # fmt: skip
    header = ("what", "unsigned", "signed / with a policy", "difference")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return ("## 12. Signed models\n\nA host with a trust policy (`CAS_TRUST`) against the same host without, and a "
            "publisher signing against not, on one `cas serve` set up for signing; medians, runs interleaved.\n\n"
            + "\n".join(lines))  # fmt: skip


def _s(s: dict) -> str:
    return f"{s['median']:.3f} s"
