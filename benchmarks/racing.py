"""Scenario 7, concurrency: N processes first-accessing the same cold model through the descriptor.

Each process is a service starting on an empty cache that shares one
``CAS_HOME``; they race to pull the model from ``cas serve`` through a
counting proxy.  Reported: wall time until all have the model, and the pack
bytes that crossed the network, against those of one service alone (N=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.harness import push_as_owner, reset, start_server
from cas import Cache
from tests.support import synth
from tests.support.procs import REPO, free_port, start, stop

SERVICE = """
import descriptor
class Service:
    model = descriptor.Model("m:latest")
print(Service().model.path)
"""


def run(work: Path, quick: bool) -> dict:
    counts = [1, 4] if quick else [1, 2, 4, 8, 16]
    model = synth.write_model_dir(work / "race-model", synth.model_tensors(81, (48 if quick else 256) << 20))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(work / "race-repo", port)
    out: dict = {"counts": {}}
    try:
        src = Cache(work / "race-src", durable=False)
        src.add(model, "m:v1")
        out["pack_bytes_pushed"] = push_as_owner(src, "m:v1", url).bytes_uploaded
        out["model_bytes"] = src.get("m:v1").size
        for n in counts:
            out["counts"][n] = _race(work / "race-home", url, n)
        out["pack_bytes_one_pull"] = out["counts"][1]["pack_bytes"]
    finally:
        stop(server)
        for d in (model, work / "race-src", work / "race-repo"):
            reset(d)
    return out


def _race(home: Path, upstream: str, n: int) -> dict:
    """N services on an empty cache, through a counting proxy; the time until all have the model."""
    port = free_port()
    purl = f"http://127.0.0.1:{port}"
    proxy = start([sys.executable, str(REPO / "tests" / "faultproxy.py"), upstream, str(port)], purl + "/_stats")
    try:
        env = {**os.environ, "CAS_HOME": str(home), "CAS_REMOTE": purl, "CAS_DURABLE": "0"}
        begin = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SERVICE], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(n)]  # fmt: skip
        paths = {p.communicate()[0].strip() for p in procs}
        elapsed = time.perf_counter() - begin
        if any(p.returncode for p in procs) or len(paths) != 1:
            raise RuntimeError(f"{n} racing services did not all get the same snapshot: {paths}")
        stats = json.loads(urllib.request.urlopen(purl + "/_stats").read())
        return {"seconds": elapsed, "pack_bytes": stats["pack_bytes"]}
    finally:
        stop(proxy)
        reset(home)
