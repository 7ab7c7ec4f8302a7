"""Scenario 9, export files: ``cas export M - | cas import -`` against ``tar -cf - | tar -xf -`` of the same
directory, whole pipeline against whole pipeline.

For MiniLM and the synthetic model: the pipe between two caches (the source cache warm, the destination
empty, no fsync on either side: ``CAS_DURABLE=0``, and tar never syncs) against tar between two folders;
then each half alone (``cas export`` to a file against ``tar -cf`` to a file, ``cas import`` of that file
against ``tar -xf``), the stream's size against the tar's, and the import's peak memory.  cas encodes and
verifies every chunk; tar copies bytes.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from benchmarks.harness import reset, summary, wall
from cas import Cache


def run(work: Path, minilm: Path, big: Path, quick: bool) -> dict:
    runs = 1 if quick else 3
    return {name: bench_model(work / f"archive-{name}", model, runs)
            for name, model in (("minilm", minilm), ("synthetic", big))}  # fmt: skip


def bench_model(work: Path, model: Path, runs: int) -> dict:
    src = Cache(work / "src", durable=False)
    info = src.add(model, "m:v1")
    dest, home, stream, tarball = work / "dest", work / "home", work / "m.casx", work / "m.tar"
    cas = f"'{sys.executable}' -m cas"
    cases = {
        "cas_pipe": f"{cas} --home '{src.root}' export m:v1 - | {cas} --home '{home}' import -",
        "tar_pipe": f"tar -cf - -C '{model}' . | tar -xf - -C '{dest}'",
        "cas_export": f"{cas} --home '{src.root}' export m:v1 '{stream}'",
        "tar_create": f"tar -cf '{tarball}' -C '{model}' .",
        "cas_import": f"{cas} --home '{home}' import '{stream}'",
        "tar_extract": f"tar -xf '{tarball}' -C '{dest}'",
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    peak_kib = 0
    env = {**os.environ, "CAS_DURABLE": "0"}
    for _ in range(runs):
        for key, cmd in cases.items():
            reset(home)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            elapsed, rss = wall(["sh", "-c", cmd], env)
            times[key].append(elapsed)
            if key == "cas_import":
                peak_kib = max(peak_kib, rss)
    out: dict = {k: summary(v) for k, v in times.items()}
    out.update(model_bytes=info.size, stream_bytes=stream.stat().st_size, tar_bytes=tarball.stat().st_size,
               import_peak_rss_mb=peak_kib / 1024)  # fmt: skip
    reset(work)
    return out


def section(a: dict) -> str:
    rows = []
    for name, r in a.items():
        mb = r["model_bytes"] / 1e6
        for ours, theirs, what in (("cas_pipe", "tar_pipe", "pipe (export into import)"),
                                   ("cas_export", "tar_create", "write the file"),
                                   ("cas_import", "tar_extract", "read the file")):  # fmt: skip
            cas_s, tar_s = r[ours]["median"], r[theirs]["median"]
            rows.append((f"{name} ({mb:.0f} MB)", what, f"{mb / cas_s:.0f} MB/s", f"{mb / tar_s:.0f} MB/s",
                         f"{tar_s / cas_s:.2f}x"))  # fmt: skip
        rows.append((f"{name} ({mb:.0f} MB)", "file size", f"{r['stream_bytes'] / 1e6:.1f} MB",
                     f"{r['tar_bytes'] / 1e6:.1f} MB", f"{r['stream_bytes'] / r['tar_bytes']:.2f}x"))  # fmt: skip
    header = ("model", "what", "cas", "tar", "cas vs tar")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    peaks = ", ".join(f"{n} {r['import_peak_rss_mb']:.0f} MB" for n, r in a.items())
    return ("## 9. Export files\n\n`cas export` / `cas import` between two caches against `tar` between two folders, "
            "whole processes, MB of model per second, no fsync on either side; cas encodes and verifies every chunk, "
            f"tar copies bytes. Peak memory of `cas import`: {peaks}.\n\n" + "\n".join(lines))  # fmt: skip


def _rate(mb: float, seconds: dict) -> str:
    return f"{mb / seconds['median']:.0f} MB/s ({mb / seconds['max']:.0f}-{mb / seconds['min']:.0f})"


def headline_rows(a: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, r in a.items():
        mb = r["model_bytes"] / 1e6
        cas_s, tar_s = r["cas_pipe"], r["tar_pipe"]
        rows.append((f"`cas export - \\| cas import -` {name} {mb:.0f} MB", _rate(mb, cas_s),
                     f"`tar -c \\| tar -x` {_rate(mb, tar_s)}", f"{tar_s['median'] / cas_s['median']:.2f}x",
                     "-"))  # fmt: skip
    return rows
