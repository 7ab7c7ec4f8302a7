"""Scenario 13, peers: cas against DVC, restic and casync on the same bytes, each with a folder repository.

Shapes (issue 22): v1, a safetensors model of three fp16 shards and one fp32 file (1.06 GB; quick 101 MB);
v2, a fine-tune of it with about 8% of its bytes changed; an incompressible model of random bytes (a
quarter of v1's size); 10,000 small files of 1-64 KiB (quick 500).  Every step is a whole process run as
a user runs it, with each tool's defaults, after a ``sync``, the tools interleaved run by run; min /
median / max.

- cas: ``cas add`` then ``cas push --remote file://...``; a fresh host's ``cas materialize --remote``
  (pull and materialize); that host's ``cas materialize`` of v2; a cached version materialized again
  after its snapshot was removed; v1 pushed once more, to another folder, on one core
  (``CAS_PUSH_PROCESSES=0``), to show what the push worker on each further core adds.  Durable as it
  comes (every file flushed before it returns), and with ``CAS_DURABLE=0`` (flushed by the kernel later,
  as the peers leave what they write).
- DVC: ``dvc add`` then ``dvc push`` to a local remote; a fresh workspace's ``dvc pull`` (fetch and
  checkout); its ``dvc pull`` of v2's ``.dvc`` file; ``dvc checkout`` after the files were removed.
- restic (``backup`` stores into the repository directly) and casync (``make``) have no separate push:
  their one step is timed as the push, and as ingest; ``restore`` / ``extract`` (casync seeded with the
  v1 it extracted) as the pulls.  restic 0.14 restores whole files, with no seed.

Baselines, the same files in the same run: ``cp -r && sync`` into a folder and ``tar | zstd -1 -T0``
(the push goals), ``zstd -d | tar -x`` of that archive (the cold pull's CPU goal).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness import met, reset, summary, wall_cpu
from benchmarks.pull import small_files
from tests.support import synth

PUSH_GOAL, PUSH_CPU_GOAL, RANDOM_PUSH_GOAL, DELTA_GOAL, COLD_GOAL, COLD_CPU_GOAL = 0.5, 1.2, 0.8, 1.0, 0.8, 1.5
MEMORY_GOAL_MB = 200
CAS = [sys.executable, "-m", "cas"]
DVC = str(Path(sys.executable).parent / "dvc")
TOOLS = ("cas", "cas, no fsync", "dvc", "restic", "casync")
STEPS = {"ingest": "ingest v1", "push": "push v1", "push_one": "push v1 on one core (`CAS_PUSH_PROCESSES=0`)",
         "push_v2": "push v2 (the increment)",
         "push_random": "push random bytes", "cold": "cold pull + checkout of v1", "delta": "a host with v1 gets v2",
         "again": "materialize a cached version again", "small": "ingest 10,000 small files"}  # fmt: skip

Step = tuple[float, float, int]  # wall seconds, CPU seconds of the process tree, peak RSS (KiB) of its largest


def shapes(root: Path, quick: bool) -> dict[str, Path]:
    """v1 and its fine-tune v2, random bytes, and many small files, written under ``root``."""
    quarter = (24 if quick else 253) << 20
    out = {name: root / name for name in ("v1", "v2", "random")}
    for d in out.values():
        d.mkdir(parents=True)
    for i, dtype in enumerate(("F16", "F16", "F16", "F32")):  # three fp16 shards and one fp32 file
        name = f"model-{i + 1:05d}-of-00003.safetensors" if dtype == "F16" else "head.safetensors"
        tensors = synth.model_tensors(60 + i, quarter, dtype)
        synth.write_safetensors(out["v1"] / name, tensors)
        synth.write_safetensors(out["v2"] / name, synth.fine_tune(tensors, 0.08, seed=70 + i))
    for d in (out["v1"], out["v2"]):
        (d / "config.json").write_text('{"kind": "synthetic", "shards": 3}')
    rng = np.random.default_rng(5)
    with open(out["random"] / "model.bin", "wb") as f:
        for _ in range(quarter >> 20):
            f.write(rng.bytes(1 << 20))
    out["small"] = small_files(root / "small", 500 if quick else 10_000)
    return out


def run(work: Path, quick: bool) -> dict:
    data = shapes(work / "peers-data", quick)
    flows: dict[str, Callable[[Path, dict[str, Path]], dict]] = {
        "baseline": baseline_flow, "cas": cas_flow, "cas, no fsync": lambda w, d: cas_flow(w, d, durable=False),
        "dvc": dvc_flow, "restic": restic_flow, "casync": casync_flow}  # fmt: skip
    chosen = {t: f for t, f in flows.items() if t == "baseline" or installed(t)}
    steps: dict[str, dict[str, list[Step]]] = {t: {} for t in chosen}
    repository: dict[str, dict[str, int]] = {}
    try:
        for _ in range(1 if quick else 3):
            for tool, flow in chosen.items():  # interleaved: each run's load falls on every tool alike
                where = work / "peers-run"
                where.mkdir()
                try:
                    got = flow(where, data)
                finally:
                    reset(where)
                repository[tool] = got.pop("bytes", {})
                for step, measured in got.items():
                    steps[tool].setdefault(step, []).append(measured)
        model_bytes = {name: tree_bytes(path) for name, path in data.items()}
    finally:
        reset(work / "peers-data")
    return {"model_bytes": model_bytes, "repository": repository, "missing": [t for t in TOOLS if t not in chosen],
            "cores": len(os.sched_getaffinity(0)),
            "steps": {tool: {step: _summary(v) for step, v in by.items()} for tool, by in steps.items()}}  # fmt: skip


def installed(tool: str) -> bool:
    return Path(DVC).exists() if tool == "dvc" else tool.startswith("cas") or shutil.which(tool) is not None


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a repository, a model), as ``du --apparent-size`` counts them."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Step:
    """One command, after a ``sync``: what the step before left to write back does not slow this one."""
    subprocess.run(["sync"], check=True)
    elapsed, rss, cpu = wall_cpu(cmd, env)
    return elapsed, cpu, rss


def sh(command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Step:
    """One shell command line, whole process tree: wall, CPU, peak RSS."""
    line = f"cd {shlex.quote(str(cwd))} && {command}" if cwd else command
    return measure(["sh", "-c", line], env)


def baseline_flow(where: Path, data: dict[str, Path]) -> dict:
    q = {k: shlex.quote(str(v)) for k, v in data.items()}
    out = shlex.quote(str(where / "v1.tar.zst"))
    return {
        "cp": sh(f"cp -r {q['v1']} {where / 'cp-v1'} && sync"),
        "cp_random": sh(f"cp -r {q['random']} {where / 'cp-random'} && sync"),
        "tar_zstd": sh(f"tar -cf - -C {q['v1']} . | zstd -q -1 -T0 -o {out} && sync"),
        "unzstd_tar": sh(f"mkdir {where / 'x'} && zstd -q -d -c {out} | tar -xf - -C {where / 'x'} && sync"),
    }


def cas_flow(where: Path, data: dict[str, Path], *, durable: bool = True) -> dict:
    """cas as it comes (durable: every file it stores is flushed before it returns), or with ``CAS_DURABLE=0``
    (flushed by the kernel later, as DVC, restic and casync leave them)."""
    repo, pub, host = f"file://{where / 'repo'}", where / "pub", where / "host"
    env = {**dict(os.environ), "CAS_DURABLE": "1" if durable else "0"}

    def cas(home: Path, *args: str) -> Step:
        return measure([*CAS, "--home", str(home), *args], env)

    out = {"ingest": cas(pub, "add", str(data["v1"]), "m:v1"), "push": cas(pub, "push", "m:v1", "--remote", repo)}
    v1_bytes = tree_bytes(where / "repo")
    env["CAS_PUSH_PROCESSES"] = "0"  # the same push on one core: what each further core adds
    out["push_one"] = cas(pub, "push", "m:v1", "--remote", f"file://{where / 'repo-one'}")
    del env["CAS_PUSH_PROCESSES"]
    cas(pub, "add", str(data["v2"]), "m:v2")
    out["push_v2"] = cas(pub, "push", "m:v2", "--remote", repo)
    v2_bytes = tree_bytes(where / "repo") - v1_bytes
    cas(pub, "add", str(data["random"]), "r:v1")
    out["push_random"] = cas(pub, "push", "r:v1", "--remote", repo)
    out["cold"] = cas(host, "materialize", "m:v1", "--remote", repo)
    out["delta"] = cas(host, "materialize", "m:v2", "--remote", repo)
    reset(host / "snapshots")
    out["again"] = cas(host, "materialize", "m:v1")
    out["small"] = cas(where / "small", "add", str(data["small"]), "s:v1")
    return {**out, "bytes": {"v1": v1_bytes, "v2": v2_bytes}}


def dvc_flow(where: Path, data: dict[str, Path]) -> dict:
    repo, ws, host = where / "repo", where / "ws", where / "host"
    env = {**dict(os.environ), "DVC_NO_ANALYTICS": "1"}

    def dvc(cwd: Path, args: str) -> Step:
        return sh(f"{shlex.quote(DVC)} {args}", cwd, env)

    for d in (ws, host, where / "small"):
        _dvc_workspace(d, repo, env)
    shutil.copytree(data["v1"], ws / "model")
    out = {"ingest": dvc(ws, "add -q model"), "push": dvc(ws, "push -q")}
    v1_bytes = tree_bytes(repo)
    shutil.copy(ws / "model.dvc", where / "v1.dvc")
    reset(ws / "model")
    shutil.copytree(data["v2"], ws / "model")
    dvc(ws, "add -q model")
    out["push_v2"] = dvc(ws, "push -q")
    v2_bytes = tree_bytes(repo) - v1_bytes
    shutil.copytree(data["random"], ws / "random")
    dvc(ws, "add -q random")
    out["push_random"] = dvc(ws, "push -q random.dvc")
    shutil.copy(where / "v1.dvc", host / "model.dvc")
    out["cold"] = dvc(host, "pull -q")
    shutil.copy(ws / "model.dvc", host / "model.dvc")
    out["delta"] = dvc(host, "pull -q")
    reset(host / "model")
    out["again"] = dvc(host, "checkout -q")
    shutil.copytree(data["small"], where / "small" / "small")
    out["small"] = dvc(where / "small", "add -q small")
    return {**out, "bytes": {"v1": v1_bytes, "v2": v2_bytes}}


def _dvc_workspace(path: Path, remote: Path, env: dict[str, str]) -> None:
    path.mkdir()
    for args in ("init -q --no-scm", f"remote add -q -d store {shlex.quote(str(remote))}"):
        sh(f"{shlex.quote(DVC)} {args}", path, env)


def restic_flow(where: Path, data: dict[str, Path]) -> dict:
    env = {**dict(os.environ), "RESTIC_REPOSITORY": str(where / "repo"), "RESTIC_PASSWORD": "bench",  # protects nothing
           "RESTIC_CACHE_DIR": str(where / "cache")}  # fmt: skip

    def restic(args: str) -> Step:
        return sh(f"restic -q {args}", None, env)

    def restore(name: str, _seed: Path | None) -> Step:  # restic 0.14 takes no seed
        return restic(f"restore latest --tag {name} --target {where / name}")

    restic("init")
    return store_and_restore(where, where / "repo", data,
                             lambda name, path: restic(f"backup --tag {name} {shlex.quote(str(path))}"),
                             restore)  # fmt: skip


def casync_flow(where: Path, data: dict[str, Path]) -> dict:
    def casync(args: str) -> Step:
        return sh(f"casync --store={where / 'store'} {args}", None, dict(os.environ))

    def extract(name: str, seed: Path | None) -> Step:
        seeded = f"--seed={seed} " if seed else ""
        return casync(f"extract {seeded}{where / name}.caidx {where / name}")

    return store_and_restore(where, where / "store", data,
                             lambda name, path: casync(f"make {where / name}.caidx {shlex.quote(str(path))}"),
                             extract)  # fmt: skip


def store_and_restore(where: Path, repo: Path, data: dict[str, Path], store: Callable[[str, Path], Step],
                      restore: Callable[[str, Path | None], Step]) -> dict:  # fmt: skip
    """restic's and casync's flow: one command stores into the repository (timed as the push, and as ingest),
    another restores (given the version restored before, as a seed where the tool takes one)."""
    out = {"push": store("v1", data["v1"])}
    v1_bytes = tree_bytes(repo)
    out["push_v2"] = store("v2", data["v2"])
    v2_bytes = tree_bytes(repo) - v1_bytes
    out["push_random"] = store("random", data["random"])
    out["cold"] = restore("v1", None)
    out["delta"] = restore("v2", where / "v1")
    out["small"] = store("small", data["small"])
    return {**out, "ingest": out["push"], "bytes": {"v1": v1_bytes, "v2": v2_bytes}}


def _summary(measured: list[Step]) -> dict:
    return {"s": summary([m[0] for m in measured]), "cpu_s": summary([m[1] for m in measured]),
            "rss_mb": max(m[2] for m in measured) / 1024}  # fmt: skip


def headline_rows(p: dict) -> list[tuple[str, str, str, str, str]]:
    """The goals of issue 22, each against its baseline or DVC measured in the same run."""
    st, base, gb = p["steps"], p["steps"]["baseline"], p["model_bytes"]["v1"] / 1e9
    cas, dvc = st["cas"], st.get("dvc")
    rows = []

    def row(measure: str, ours: dict, theirs: dict, label: str, goal: float) -> None:
        ratio = theirs["s"]["median"] / ours["s"]["median"]
        rows.append((measure, _spread(ours["s"]), f"{label} {_spread(theirs['s'])}", f"{ratio:.2f}x",
                     f"≥ {goal}x: {met(ratio >= goal)}"))  # fmt: skip

    row(f"peers: `cas push` v1 ({_gb(gb)}) to a folder", cas["push"], base["cp"], "`cp -r && sync`", PUSH_GOAL)
    cpu, tar_cpu = cas["push"]["cpu_s"]["median"] / gb, base["tar_zstd"]["cpu_s"]["median"] / gb
    rows.append(("peers: `cas push` v1, CPU seconds per GB", f"{cpu:.2f}", f"`tar \\| zstd -1` {tar_cpu:.2f}",
                 f"{cpu / tar_cpu:.2f}x", f"≤ {PUSH_CPU_GOAL}x: {met(cpu <= PUSH_CPU_GOAL * tar_cpu)}"))  # fmt: skip
    row("peers: `cas push` of random bytes", cas["push_random"], base["cp_random"], "`cp -r && sync`", RANDOM_PUSH_GOAL)
    if dvc:  # like for like: neither flushes what it writes; then cas as it comes, durable
        fast = st.get("cas, no fsync", cas)
        row("peers: a host with v1 gets v2, no fsync", fast["delta"], dvc["delta"], "`dvc pull`", DELTA_GOAL)
        row("peers: cold pull + materialize, no fsync", fast["cold"], dvc["cold"], "`dvc pull`", COLD_GOAL)
        row("peers: a host with v1 gets v2, durable", cas["delta"], dvc["delta"], "`dvc pull`", DELTA_GOAL)
        row("peers: cold pull + materialize, durable", cas["cold"], dvc["cold"], "`dvc pull`", COLD_GOAL)
    cold_cpu, raw_cpu = cas["cold"]["cpu_s"]["median"], base["unzstd_tar"]["cpu_s"]["median"]
    rows.append(("peers: cold pull + materialize, CPU seconds", f"{cold_cpu:.2f}",
                 f"`zstd -d \\| tar -x` {raw_cpu:.2f}", f"{cold_cpu / raw_cpu:.2f}x",
                 f"≤ {COLD_CPU_GOAL}x: {met(cold_cpu <= COLD_CPU_GOAL * raw_cpu)}"))  # fmt: skip
    peak = max(cas[s]["rss_mb"] for s in ("push", "cold", "delta"))
    rows.append(("peers: push and pull peak memory (largest process)", f"{peak:.0f} MB", "-", "-",
                 f"< {MEMORY_GOAL_MB} MB: {met(peak < MEMORY_GOAL_MB)}"))  # fmt: skip
    return rows


def section(p: dict) -> str:
    """Every step of every tool, and the repository bytes."""
    tools = [t for t in TOOLS if t in p["steps"]]
    head = "| step | " + " | ".join(tools) + " |\n|---|" + "---|" * len(tools)
    lines = [head]
    for step, label in STEPS.items():
        cells = [_spread(p["steps"][t][step]["s"]) if step in p["steps"][t] else "-" for t in tools]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for version in ("v1", "v2"):
        cells = [_mb(p["repository"][t][version]) for t in tools]
        lines.append(
            f"| repository bytes, {version}{' increment' if version == 'v2' else ''} | " + " | ".join(cells) + " |"
        )
    base = p["steps"]["baseline"]
    named = (("cp", "`cp -r && sync` v1"), ("tar_zstd", "`tar | zstd -1 -T0` v1"),
             ("cp_random", "`cp -r && sync` random"), ("unzstd_tar", "`zstd -d | tar -x` v1"))  # fmt: skip
    baselines = ", ".join(f"{label} {_spread(base[k]['s'])} ({base[k]['cpu_s']['median']:.2f} CPU-s)"
                          for k, label in named)  # fmt: skip
    sizes = ", ".join(f"{k} {_mb(v)}" for k, v in p["model_bytes"].items())
    cores = "; ".join(_per_core(p, step, label) for step, label in (("push_one", "one core"),
                                                                   ("push", f"{p['cores']} cores")))  # fmt: skip
    missing = f" Not installed, so not run: {', '.join(p['missing'])}." if p["missing"] else ""
    doc = __doc__.split("\n\n", 1)[1].strip()
    return (
        f"## 13. Peers\n\n{doc}\n\nShapes: {sizes}. Baselines: {baselines}.{missing}\n\n"
        f"`cas push` of v1 (durable), per GB: {cores}.\n\n"
        "Seconds, whole process (min / median / max):\n\n" + "\n".join(lines)
    )


def _per_core(p: dict, step: str, label: str) -> str:
    gb, m = p["model_bytes"]["v1"] / 1e9, p["steps"]["cas"][step]
    return f"{label} {gb / m['s']['median']:.2f} GB/s, {m['cpu_s']['median'] / gb:.2f} CPU-s"


def _spread(s: dict) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})" if s["n"] > 1 else f"{s['median']:.2f} s"


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _gb(n: float) -> str:
    return f"{n:.2f} GB"
