"""Scenario 3, pull throughput: ``cas pull`` against a raw parallel download of the same bytes, by concurrency.

Both are whole processes against the same ``cas serve`` on 127.0.0.1, at
the same number of requests in flight (1 to 32); the raw download writes
the pack bytes to disk and decodes nothing.  Non-durable on both sides
(``CAS_DURABLE=0``, no fsync), so the ratio is the cost of decoding,
verifying and publishing; then, at the default 16 in flight, a durable
pull against a download that fsyncs its files.  Peak memory is the summed
RSS of the pull's process tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks.harness import push_as_owner, reset, start_server, summary, timed_tree, wall
from cas import Cache
from tests.support.procs import free_port, stop


def run(work: Path, model: Path, quick: bool) -> dict:
    levels = [4, 16] if quick else [1, 2, 4, 8, 16, 32]
    runs = 1 if quick else 3
    repo = work / "pull-repo"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(repo, port)
    try:
        src = Cache(work / "pull-src", durable=False)
        info = src.add(model, "bench:v1")
        push_as_owner(src, "bench:v1", url)
        packs = [f"packs/{p.name}={p.stat().st_size}" for p in (repo / "packs").iterdir() if "." not in p.name]
        env = {**os.environ, "CAS_DURABLE": "0"}
        host, dest = work / "pull-host", work / "pull-raw"
        out: dict = {"model_bytes": info.size, "levels": {}}
        for n in levels:
            raw_t, cas_t = [], []
            for _ in range(runs):
                for cmd, times, target in (
                    ([sys.executable, "-m", "benchmarks.rawget", "--concurrency", str(n), url, str(dest), *packs],
                     raw_t, dest),
                    ([sys.executable, "-m", "cas", "--home", str(host), "pull", "bench:v1", "--remote", url,
                      "--concurrency", str(n)], cas_t, host),
                ):  # fmt: skip
                    reset(target)
                    os.sync()
                    times.append(wall(cmd, env)[0])
                    reset(target)
            out["levels"][n] = {"raw_s": summary(raw_t), "cas_s": summary(cas_t)}
        sixteen = ["--concurrency", "16"]  # the default, said outright: the comparison depends on it
        cmd = [sys.executable, "-m", "cas", "--home", str(host), "pull", "bench:v1", "--remote", url, *sixteen]
        raw_sync, durable = [], []
        for _ in range(runs):  # the default, durable cache against a download that fsyncs too
            reset(dest)
            os.sync()
            raw_cmd = [sys.executable, "-m", "benchmarks.rawget", "--fsync", *sixteen, url, str(dest), *packs]
            raw_sync.append(wall(raw_cmd, env)[0])
            reset(dest)
            reset(host)
            os.sync()
            durable.append(wall(cmd, {**env, "CAS_DURABLE": "1"})[0])
            reset(host)
        out["durable"] = {"raw_fsync_s": summary(raw_sync), "cas_s": summary(durable)}
        out["peak_rss_mb"] = timed_tree(cmd, env)[1] / 1024
        reset(host)
    finally:
        stop(server)
    return out
