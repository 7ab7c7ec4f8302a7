"""Scenario 1, resolution latency: how long a service waits for its model, against BentoML and huggingface_hub.

(a) repeated access on a resolved instance and (b) a new instance in a warm
process, timed in-process; (c) first access in a fresh process with the
model materialized, in-process and as whole-process wall time against
``python -c pass``; (d) first access with blobs present but no snapshot;
(e) a cold pull from ``cas serve`` on 127.0.0.1 through the descriptor: a plain
first access, the same inside a running event loop (as in BentoML's lifespan
or a notebook), and ``await Model.aresolve()``, each in fresh processes with
clean caches, so the report shows what a running loop costs.
BentoML and huggingface_hub are measured on the same files when the
``bench`` extra is installed, and reported as missing otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import timeit
from pathlib import Path

from benchmarks.harness import push_as_owner, reset, run_json, start_server, summary, wall
from cas import Cache
from tests.support.procs import REPO, free_port, stop

FIRST_ACCESS = """
import json, time
t0 = time.perf_counter()
import descriptor
t_imported = time.perf_counter()
class Service:
    model = descriptor.Model("bench:latest")
s = Service()
t1 = time.perf_counter()
path = s.model.path
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t_imported - t0) * 1e3, "first_us": (t2 - t1) * 1e6}))
"""

# The same cold first access from inside a running loop: the attribute read, and `await aresolve()`.
IN_LOOP = """
import asyncio, json, time
import descriptor
class Service:
    model = descriptor.Model("bench:latest")
async def main():
    s = Service()
    t1 = time.perf_counter()
    {access}
    path = s.model.path
    return (time.perf_counter() - t1) * 1e6
print(json.dumps({{"first_us": asyncio.run(main())}}))
"""
LOOP_ATTRIBUTE = IN_LOOP.format(access="pass")
LOOP_ARESOLVE = IN_LOOP.format(access="await Service.model.aresolve()")

HF_FIRST_CALL = """
import json, time, sys
t0 = time.perf_counter()
from huggingface_hub import snapshot_download
t1 = time.perf_counter()
path = snapshot_download(sys.argv[1], local_files_only=True)
t2 = time.perf_counter()
snapshot_download(sys.argv[1], local_files_only=True)
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_us": (t2 - t1) * 1e6, "second_us": (t3 - t2) * 1e6}))
"""

# Whole processes a service would start: import, resolve the model's path, exit.
CAS_PROCESS = "import descriptor\nclass S:\n    m = descriptor.Model('bench:latest')\nS().m.path"
BENTO_PROCESS = "import bentoml\nclass S:\n    m = bentoml.models.BentoModel('bench:latest')\nS().m.path"
HF_PROCESS = "from huggingface_hub import snapshot_download\nsnapshot_download('bench/model', local_files_only=True)"


BENTO_FIRST_ACCESS = """
import json, time
t_import = time.perf_counter()
import bentoml
t_imported = time.perf_counter()
class Service:
    model = bentoml.models.BentoModel("bench:latest")
s = Service()
t0 = time.perf_counter()
m = s.model
path = m.path
t1 = time.perf_counter()
bentoml.models.get("bench:latest")
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t_imported - t_import) * 1e3, "first_us": (t1 - t0) * 1e6, "get_us": (t2 - t1) * 1e6}))
"""


def bench_repeated(home: Path) -> dict:
    import descriptor

    class Service:
        model = descriptor.Model("bench:latest", cache=Cache(home))

        def __init__(self) -> None:
            self.plain = object()

    s = Service()
    s.model  # noqa: B018 - resolve once
    n = 2_000_000
    t_model = min(timeit.repeat(lambda: s.model, number=n, repeat=5)) / n
    t_plain = min(timeit.repeat(lambda: s.plain, number=n, repeat=5)) / n
    t_new = min(timeit.repeat(lambda: Service().model, number=n // 10, repeat=5)) / (n // 10)
    t_new_plain = min(timeit.repeat(lambda: Service().plain, number=n // 10, repeat=5)) / (n // 10)
    return {
        "model_ns": t_model * 1e9,
        "plain_ns": t_plain * 1e9,
        "new_instance_ns": t_new * 1e9,
        "new_instance_plain_ns": t_new_plain * 1e9,
    }


def bentoml_env(work: Path, model: Path) -> dict[str, str] | None:
    """The environment of a BentoML store holding the same files as ``bench:latest``; None without BentoML."""
    try:
        import bentoml  # noqa: F401
    except ImportError:
        return None
    bento_home = work / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(bento_home), "BENTOML_DO_NOT_TRACK": "True"}
    store = (
        "import bentoml, shutil, sys\n"
        "with bentoml.models.create('bench') as m:\n"
        "    shutil.copytree(sys.argv[1], m.path, dirs_exist_ok=True)\n"
    )
    subprocess.run([sys.executable, "-c", store, str(model)], env=env, check=True, capture_output=True)
    return env


def first_access_side_by_side(env: dict[str, str], benv: dict[str, str] | None, runs: int) -> tuple[list, list]:
    """``import descriptor`` and the first access of a fresh process, and the same for ``import bentoml`` and
    ``BentoModel``, run alternately so that a drift in the (shared) machine hits both alike."""
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(run_json(FIRST_ACCESS, env))
        if benv is not None:
            theirs.append(run_json(BENTO_FIRST_ACCESS, benv))
    return ours, theirs


def hf_cache(root: Path, model: Path, repo_id: str = "bench/model") -> None:
    """The same files in the Hugging Face cache layout: blobs by hash, a snapshot of symlinks, refs/main."""
    import hashlib

    base = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    for f in sorted(p for p in model.rglob("*") if p.is_file()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()  # small model: fine to read whole here
        blob = base / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = base / "snapshots" / commit / f.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)


def bench_hf(work: Path, model: Path, runs: int) -> dict | None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return None
    hub = work / "hf-hub"
    hf_cache(hub, model)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    code = [sys.executable, "-c", HF_FIRST_CALL, "bench/model"]
    samples = [run_json_args(code, env) for _ in range(runs)]
    return {
        "import_ms": summary([s["import_ms"] for s in samples]),
        "first_call_us": summary([s["first_us"] for s in samples]),
        "second_call_us": summary([s["second_us"] for s in samples]),
        "process_s": summary([wall([sys.executable, "-c", HF_PROCESS], env)[0] for _ in range(runs)]),
    }


def run_json_args(cmd: list[str], env: dict[str, str]) -> dict:
    import json

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(work: Path, model: Path, quick: bool) -> dict:
    runs = 3 if quick else 21
    home = work / "lat-home"
    cache = Cache(home)
    cache.add(model, "bench:v1")
    cache.materialize("bench:latest")
    env = {**os.environ, "CAS_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "cas"), str(REPO / "descriptor")], check=True)
    benv = bentoml_env(work, model)
    run_json(FIRST_ACCESS, env)  # one untimed run each: the files they read are in the page cache for all runs
    if benv is not None:
        run_json(BENTO_FIRST_ACCESS, benv)
    warm, bento = first_access_side_by_side(env, benv, runs)
    out: dict = {
        "first_access_materialized_us": summary([s["first_us"] for s in warm]),
        "import_descriptor_ms": summary([s["import_ms"] for s in warm]),
        "process_first_access_s": summary([wall([sys.executable, "-c", CAS_PROCESS], env)[0] for _ in range(runs)]),
        "process_pass_s": summary([wall([sys.executable, "-c", "pass"], env)[0] for _ in range(runs)]),
    }
    out["repeated"] = bench_repeated(home)
    no_snapshot = []
    for _ in range(runs):
        reset(home / "snapshots")
        no_snapshot.append(run_json(FIRST_ACCESS, env)["first_us"])
    out["first_access_blobs_only_us"] = summary(no_snapshot)
    out["cold_pull"] = _cold_pull(work, model, max(3, runs // 2))
    out["bentoml"] = None
    if benv is not None:
        out["bentoml"] = {
            "import_ms": summary([s["import_ms"] for s in bento]),
            "first_access_us": summary([s["first_us"] for s in bento]),
            "models_get_us": summary([s["get_us"] for s in bento]),
        }
        bento_runs = [wall([sys.executable, "-c", BENTO_PROCESS], benv)[0] for _ in range(runs)]
        out["bentoml"]["process_s"] = summary(bento_runs)
    out["huggingface_hub"] = bench_hf(work, model, runs)
    return out


def _cold_pull(work: Path, model: Path, runs: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(work / "lat-repo", port)
    try:
        src = Cache(work / "lat-src", durable=False)
        src.add(model, "bench:v1")
        push_as_owner(src, "bench:v1", url)
        times: dict[str, list[float]] = {"plain": [], "loop_attribute": [], "loop_aresolve": []}
        scripts = {"plain": FIRST_ACCESS, "loop_attribute": LOOP_ATTRIBUTE, "loop_aresolve": LOOP_ARESOLVE}
        for i in range(runs):
            for kind, code in scripts.items():  # interleaved: a drift in the machine hits every kind alike
                env = {**os.environ, "CAS_HOME": str(work / f"lat-cold-{i}-{kind}"), "CAS_REMOTE": url}
                times[kind].append(run_json(code, env)["first_us"] / 1e6)
                reset(work / f"lat-cold-{i}-{kind}")
    finally:
        stop(server)
    out = {kind: summary(values) for kind, values in times.items()}
    return {"seconds": out["plain"], "in_loop_seconds": out["loop_attribute"],
            "aresolve_seconds": out["loop_aresolve"], "bytes": src.get("bench:v1").size}  # fmt: skip
