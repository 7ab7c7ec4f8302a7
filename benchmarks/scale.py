"""Scenario 6, scale: time and peak memory of add, push, pull and materialize as models grow.

Two sweeps, each step a fresh cache and repository: model size (one
safetensors file, 100 MB to 10 GB; the largest only in full mode) and file
count (1 to 10,000 files holding 64 MB in all).  Each operation is a whole
``cas`` process; peak memory is the summed RSS of its process tree.

Materializing many small files against ``cp -rl`` is in scenario 15 (``landing``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.harness import TOKEN, reset, start_server, timed_tree
from tests.support import synth
from tests.support.procs import free_port, stop


def _many_files(path: Path, count: int, total: int) -> Path:
    rng = np.random.default_rng(count)
    path.mkdir(parents=True)
    per = max(1, total // count)
    for i in range(count):
        d = path / f"shard-{i // 1000:03d}"
        d.mkdir(exist_ok=True)
        (d / f"part-{i:05d}.bin").write_bytes(synth.weights(rng, (max(1, per // 4),)).tobytes())
    return path


def _steps(model: Path, work: Path, url: str) -> dict:
    env = {**os.environ, "CAS_DURABLE": "0", "CAS_TOKEN": TOKEN}
    src, host = work / "scale-src", work / "scale-host"
    cas = [sys.executable, "-m", "cas"]
    out = {}
    for op, cmd in (
        ("add", [*cas, "--home", str(src), "add", str(model), "m:v1"]),
        ("push", [*cas, "--home", str(src), "push", "m:v1", "--remote", url]),
        ("pull", [*cas, "--home", str(host), "pull", "m:v1", "--remote", url]),
        ("materialize", [*cas, "--home", str(host), "materialize", "m:v1"]),
    ):
        seconds, peak = timed_tree(cmd, env)
        out[op] = {"seconds": seconds, "peak_rss_mb": peak / 1024}
    reset(src)
    reset(host)
    return out


def run(work: Path, quick: bool) -> dict:
    sizes_mb = [64] if quick else [100, 1000, 10000]
    counts = [1000] if quick else [1, 100, 1000, 10000]
    out: dict = {"size": {}, "files": {}}
    for label, sweep in (("size", sizes_mb), ("files", counts)):
        for n in sweep:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            repo = work / "scale-repo"
            server = start_server(repo, port)
            try:
                model = work / "scale-model"
                if label == "size":
                    synth.write_model_dir(model, synth.model_tensors(71, n << 20, layer_bytes=8 << 20))
                else:
                    _many_files(model, n, 64 << 20)
                out[label][n] = {"bytes": sum(p.stat().st_size for p in model.rglob("*") if p.is_file())}
                out[label][n].update(_steps(model, work, url))
            finally:
                stop(server)
                reset(work / "scale-model")
                reset(repo)
    return out
