"""The report of ``python -m benchmarks``: a headline table of every goal, a section per scenario, plots.

Pure formatting of the results dict (the JSON file holds the same figures);
``plots`` draws with matplotlib when it is installed (the ``bench`` and
``test`` extras) and says so in the report when it is not.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from benchmarks import archive, fanout, ingest, landing, lifecycle, mutation, peers, registry, soak, trust
from benchmarks.harness import met


def machine() -> dict:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 2**30, 1), "python": sys.version.split()[0],
            "platform": platform.platform()}  # fmt: skip


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _spread(s: dict, unit: str, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """``median unit (min-max)`` of a summary."""
    return f"{fmt.format(s['median'] * scale)} {unit} ({fmt.format(s['min'] * scale)}-{fmt.format(s['max'] * scale)})"


def _rate(mb: float, seconds: dict) -> str:
    """Throughput of the median run, with that of the slowest and fastest runs."""
    return f"{mb / seconds['median']:.0f} MB/s ({mb / seconds['max']:.0f}-{mb / seconds['min']:.0f})"


def _goal(ratio: float, limit: float, at_most: bool) -> str:
    """The goal and whether the ratio of medians meets it."""
    met = ratio <= limit if at_most else ratio >= limit
    return f"{'≤' if at_most else '≥'} {limit}x: {'met' if met else 'not met'}"


def _span(s: dict, fmt: str = "{:.2f}") -> str:
    """median (min-max) of a ``harness.summary``."""
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def goal_rows(g: dict) -> list[tuple[str, str, str, str, str]]:
    """Issue 14's pull goals, each against the raw download of the same pack bytes to disk, 16 in flight."""
    rows = []
    for dtype in ("f16", "f32"):
        d = g.get(dtype)
        if not d:
            continue
        mb = d["model_bytes"] / 1e6
        cpu, speed = d["cpu_ratio"], d["speed_ratio"]
        rows.append((f"`cas pull` {dtype} {mb:.0f} MB: CPU s per GB, whole process tree",
                     _span(d["cas_cpu_per_gb"]), f"raw download to disk {_span(d['raw_cpu_per_gb'])}",
                     f"{_span(cpu)}x", f"≤ 1.5x: {met(cpu['median'] <= 1.5)}"))  # fmt: skip
        rows.append((f"`cas pull` {dtype} {mb:.0f} MB: throughput, no fsync", _rate(mb, d["cas_s"]),
                     f"raw download to disk {_rate(mb, d['raw_s'])}", f"{_span(speed)}x",
                     f"≥ 0.8x: {met(speed['median'] >= 0.8)}"))  # fmt: skip
        rows.append((f"`cas pull` {dtype} peak memory (process tree)", f"{d['peak_rss_mb']:.0f} MB", "-", "-",
                     f"< 500 MB: {met(d['peak_rss_mb'] < 500)}"))  # fmt: skip
    sf = g.get("small_files")
    if sf:
        mb = sf["model_bytes"] / 1e6
        for prefix, label, base in (("", "no fsync", "raw download of its packs"),
                                    ("durable_", "durable", "raw download of its packs + fsync")):  # fmt: skip
            if prefix + "cas_s" not in sf:
                continue
            speed = sf[prefix + "speed_ratio"]
            rows.append((f"`cas pull` {sf['files']:,} small files ({mb:.0f} MB), {label}",
                         _rate(mb, sf[prefix + "cas_s"]), f"{base} {_rate(mb, sf[prefix + 'raw_s'])}",
                         f"{_span(speed)}x",
                         f"≥ 0.5x: {met(speed['median'] >= 0.5)}"))  # fmt: skip
    return rows


def headline(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(measure, cas, baseline, ratio, goal) for every goal named in earlier issues."""
    rows = []
    lat = r.get("latency")
    if lat:
        bento = lat.get("bentoml")
        ours = lat["import_descriptor_ms"]
        if bento and "import_ms" in bento:  # issue 14, goal 3
            ratio = ours["median"] / bento["import_ms"]["median"]
            rows.append(("`import descriptor`, fresh process", _spread(ours, "ms"),
                         "`import bentoml` " + _spread(bento["import_ms"], "ms"), f"{ratio:.3f}x",
                         _goal(ratio, 0.25, at_most=True)))  # fmt: skip
        first_s = lat["first_access_materialized_us"]
        first = first_s["median"]
        base = "BentoModel " + _spread(bento["first_access_us"], "µs", "{:.0f}") if bento else "BentoML not installed"
        ratio_first = first / bento["first_access_us"]["median"] if bento else None
        rows.append(("first access, fresh process, materialized", _spread(first_s, "µs", "{:.0f}"), base,
                     f"{ratio_first:.3f}x" if bento else "-",
                     _goal(ratio_first, 0.1, at_most=True) if bento else "≤ 0.1x"))  # fmt: skip
        cas_proc = lat["process_first_access_s"]
        for label, other in (("BentoML", lat.get("bentoml")), ("huggingface_hub", lat.get("huggingface_hub"))):
            if other:
                theirs = other["process_s"]
                rows.append((f"service start (import, resolve, exit) vs {label}",
                             _spread(cas_proc, "ms", "{:.0f}", 1e3), _spread(theirs, "ms", "{:.0f}", 1e3),
                             f"{cas_proc['median'] / theirs['median']:.2f}x", "faster"))  # fmt: skip
        rep = lat["repeated"]
        rows.append(("repeated access", f"{rep['model_ns']:.1f} ns", f"plain attribute {rep['plain_ns']:.1f} ns",
                     f"{rep['model_ns'] / rep['plain_ns']:.2f}x", "≈ 1x"))  # fmt: skip
    if r.get("ingest"):
        rows += ingest.headline_rows(r["ingest"])
    pull = r.get("pull")
    if pull:
        n = 16 if 16 in pull["levels"] else max(pull["levels"])
        lv = pull["levels"][n]
        mb = pull["model_bytes"] / 1e6
        rows.append((f"`cas pull` {mb:.0f} MB, {n} in flight, no fsync", _rate(mb, lv["cas_s"]),
                     "raw parallel download " + _rate(mb, lv["raw_s"]),
                     f"{lv['raw_s']['median'] / lv['cas_s']['median']:.2f}x", "≥ 0.8x"))  # fmt: skip
        dur = pull["durable"]
        rows.append((f"`cas pull` {mb:.0f} MB, durable (fsyncs blobs)", _rate(mb, dur["cas_s"]),
                     "raw parallel download + fsync " + _rate(mb, dur["raw_fsync_s"]),
                     f"{dur['raw_fsync_s']['median'] / dur['cas_s']['median']:.2f}x", "≥ 0.8x"))  # fmt: skip
        rows.append(("`cas pull` peak memory", f"{pull['peak_rss_mb']:.0f} MB", "-", "-", "< 500 MB"))
        rows += goal_rows(pull.get("goals") or {})
    dd = r.get("dedup")
    if dd:
        ft = dd["10% of tensors changed"]
        rows.append(("delta pull, 10% of tensors changed: raw bytes moved",
                     f"{_mb(ft['raw_moved'])} ({_mb(ft['encoded_moved'])} on the wire)",
                     f"model {_mb(ft['size'])}; whole-file dedup moves {_mb(ft['whole_file_bytes'])}",
                     f"{ft['raw_moved'] / ft['size']:.3f}x", "≤ 0.15x"))  # fmt: skip
    cd = r.get("codec")
    if cd:
        for dtype in ("f32", "minilm fp32 (real)"):
            c = cd["dtypes"][dtype]
            rows.append((f"repository bytes, {dtype}", f"{c['cas_ratio']:.3f}x raw", f"zstd {c['zstd_ratio']:.3f}x",
                         f"{c['cas_ratio'] / c['zstd_ratio']:.3f}x", "≤ 0.85x raw; < zstd"))  # fmt: skip
        for dtype in ("f16", "bf16"):
            c = cd["dtypes"][dtype]
            rows.append((f"repository bytes, {dtype}", f"{c['cas_ratio']:.3f}x raw", f"zstd {c['zstd_ratio']:.3f}x",
                         f"{c['cas_ratio'] / c['zstd_ratio']:.3f}x", "< zstd"))  # fmt: skip
    rc = r.get("racing")
    if rc:
        n = max(rc["counts"])
        x = rc["counts"][n]
        one = rc["pack_bytes_one_pull"]
        rows.append((f"{n} processes racing on a cold model: bytes fetched", _mb(x["pack_bytes"]),
                     f"one process alone {_mb(one)}", f"{x['pack_bytes'] / one:.2f}x",
                     "1x (each chunk once)"))  # fmt: skip
    if r.get("fanout"):
        rows += fanout.headline_rows(r["fanout"])
    if r.get("archive"):
        rows += archive.headline_rows(r["archive"])
    if r.get("trust"):
        rows += trust.headline_rows(r["trust"])
    if r.get("peers"):
        rows += peers.headline_rows(r["peers"])
    if r.get("registry"):
        rows += registry.headline_rows(r["registry"])
    if r.get("landing"):
        rows += landing.headline_rows(r["landing"])
    if r.get("mutation"):
        rows += mutation.headline_rows(r["mutation"])
    if r.get("soak"):
        s = r["soak"]
        rows.append((f"soak, {s['minutes']:g} min: failures", str(s["failures"]),
                     f"{sum(s['kills_landed'].values())} kills landed, {sum(s['faults_injected'].values())} faults",
                     "-", f"0: {met(s['failures'] == 0)}"))  # fmt: skip
    return rows


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _med(s: dict, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return fmt.format(s["median"] * scale)


def sections(r: dict) -> list[str]:
    out = []
    lat = r.get("latency")
    if lat:
        rep, first = lat["repeated"], lat["first_access_materialized_us"]
        rows = [
            ("(a) repeated access", f"{rep['model_ns']:.1f} ns", f"plain attribute {rep['plain_ns']:.1f} ns"),
            ("(b) new instance, warm process", f"{rep['new_instance_ns']:.0f} ns",
             f"new instance, plain attribute {rep['new_instance_plain_ns']:.0f} ns"),
            ("(c) first access, fresh process (in-process, median / max)",
             f"{first['median']:.0f} / {first['max']:.0f} µs",
             f"after `import descriptor`: {lat['import_descriptor_ms']['median']:.1f} ms"),
            ("(c) whole process: import, resolve, exit (min / median / max)",
             "{min:.3f} / {median:.3f} / {max:.3f} s".format(**lat["process_first_access_s"]),
             "`python -c pass` {min:.3f} / {median:.3f} / {max:.3f} s".format(**lat["process_pass_s"])),
            ("(d) first access, blobs but no snapshot", f"{_med(lat['first_access_blobs_only_us'], 1e-3)} ms", "-"),
            (f"(e) cold pull of {_mb(lat['cold_pull']['bytes'])} through the descriptor",
             f"{_med(lat['cold_pull']['seconds'])} s", "-"),
        ]  # fmt: skip
        cold = lat["cold_pull"]
        for label, key in (("attribute read inside a running loop", "in_loop_seconds"),
                           ("`await aresolve()` inside a running loop", "aresolve_seconds")):  # fmt: skip
            if key in cold:
                ratio = cold[key]["median"] / cold["seconds"]["median"]
                rows.append((f"(e) the same, {label}", f"{_med(cold[key])} s", f"{ratio:.2f}x the plain access"))
        if lat.get("bentoml"):
            b = lat["bentoml"]
            times = f"{b['first_access_us']['median']:.0f} / {b['models_get_us']['median']:.0f} µs"
            imported = f" (after a {b['import_ms']['median']:.1f} ms `import bentoml`)" if "import_ms" in b else ""
            rows.append((f"BentoML: `BentoModel` first access / `bentoml.models.get`{imported}", times, "-"))
            rows.append(("BentoML whole process: import, `BentoModel(...).path`, exit",
                         "{min:.3f} / {median:.3f} / {max:.3f} s".format(**b["process_s"]), "-"))  # fmt: skip
        else:
            rows.append(("BentoML", "not installed (`pip install -e '.[bench]'`)", "-"))
        if lat.get("huggingface_hub"):
            h = lat["huggingface_hub"]
            rows.append(
                (
                    "huggingface_hub: `snapshot_download(local_files_only=True)` first / second call "
                    "(after a {:.0f} ms import)".format(h["import_ms"]["median"]),
                    f"{_med(h['first_call_us'], 1e-3)} / {_med(h['second_call_us'], 1e-3)} ms",
                    "-",
                )
            )
            rows.append(("huggingface_hub whole process: import, `snapshot_download`, exit",
                         "{min:.3f} / {median:.3f} / {max:.3f} s".format(**h["process_s"]), "-"))  # fmt: skip
        else:
            rows.append(("huggingface_hub", "not installed (`pip install -e '.[bench]'`)", "-"))
        out.append("## 1. Resolution latency\n\nHow long a service waits for its model path: the descriptor against "
                   "BentoML and huggingface_hub on the same files, each in a fresh process unless said.\n\n"
                   + _table(("case", "cas", "baseline"), rows))  # fmt: skip
    if r.get("ingest"):
        out.append(ingest.section(r["ingest"]))
    pull = r.get("pull")
    if pull:
        mb = pull["model_bytes"] / 1e6
        rows = [(n, f"{mb / v['cas_s']['median']:.0f} MB/s", f"{mb / v['raw_s']['median']:.0f} MB/s",
                 f"{v['raw_s']['median'] / v['cas_s']['median']:.2f}x") for n, v in pull["levels"].items()]  # fmt: skip
        out.append(f"## 3. Pull\n\n`cas pull` of {mb:.0f} MB from `cas serve` against a raw parallel download of the "
                   "same pack bytes at the same concurrency; throughput is MB of model per second, whole processes, "
                   f"no fsync. Peak memory of the pull's process tree: {pull['peak_rss_mb']:.0f} MB.\n\n"
                   + _table(("in flight", "cas pull", "raw download", "ratio"), rows)
                   + "\n\nDurable, 16 in flight: cas pull {:.0f} MB/s, raw download + fsync {:.0f} MB/s.".format(
                       mb / pull["durable"]["cas_s"]["median"], mb / pull["durable"]["raw_fsync_s"]["median"])
                   + "\n\n![pull throughput](pull.png)")  # fmt: skip
        if pull.get("goals"):
            out.append("### Pull goals (issue 14)\n\nEach pull beside the raw download of its own pack bytes to disk "
                       "(`benchmarks/rawget.py`, the same `cas serve`, 16 in flight), runs interleaved; CPU is user + "
                       "system of the whole process tree (the pull's worker processes included), per GB of model; "
                       "ratios are taken run by run, median (min-max).\n\n"
                       + _table(("measure", "cas", "baseline", "ratio", "goal"), goal_rows(pull["goals"])))  # fmt: skip
    dd = r.get("dedup")
    if dd:
        rows = [(k, _mb(v["size"]), _mb(v["raw_moved"]), _mb(v["whole_file_bytes"]),
                 f"{v['raw_moved'] / v['whole_file_bytes']:.2f}x" if v["whole_file_bytes"] else "-",
                 _mb(v["encoded_moved"]), _mb(v["repo_bytes_added"]))
                if k != "base" else (k, _mb(v["size"]), "-", "-", "-", "-", _mb(v["repo_bytes_added"]))
                for k, v in dd.items()]  # fmt: skip
        out.append("## 4. Deduplication\n\nEach variant is pulled to a host holding only the base, from a "
                   "repository holding only the base: the raw bytes cas had to move (model size less the chunks "
                   "it reused) against whole-file deduplication (the Hugging Face cache, BentoML), which moves "
                   "every file whose hash changed; then the encoded bytes that crossed the network for them, and "
                   "the bytes the variant's push added to the repository.\n\n"
                   + _table(("variant", "size", "cas moves (raw)", "whole-file moves", "ratio", "cas on the wire",
                             "repository bytes added"), rows)
                   + "\n\n![deduplication](dedup.png)")  # fmt: skip
    cd = r.get("codec")
    if cd:
        rows = [(k, f"{v['cas_ratio']:.3f}", f"{v['zstd_ratio']:.3f}", f"{v['cas_encode_mbps']:.0f}",
                 f"{v['cas_decode_verify_mbps']:.0f}", f"{v['zstd_encode_mbps']:.0f}", f"{v['zstd_decode_mbps']:.0f}")
                for k, v in cd["dtypes"].items()]  # fmt: skip
        sizes = [(f"{c['avg_kib']} KiB", f"{c['fetched_over_changed']:.2f}x", f"{c['tree_kb']:.0f} KB")
                 for c in cd["chunk_sizes"]]  # fmt: skip
        out.append("## 5. Codec\n\nStored size over raw size per dtype (raw chunks are 1.0 by definition), and one-"
                   "thread speeds in MB/s of raw bytes; cas decode includes verifying the chunk id.\n\n"
                   + _table(("weights", "cas", "zstd", "cas encode", "cas decode+verify", "zstd encode",
                             "zstd decode"), rows)
                   + "\n\nChunk size: bytes a 10% fine-tune fetches over the bytes that changed, and tree "
                   "metadata (cas uses 64 KiB).\n\n"
                   + _table(("average chunk", "fetched / changed", "tree"), sizes))  # fmt: skip
    sc = r.get("scale")
    if sc:
        rows = []
        for label, sweep in (("size", sc["size"]), ("files", sc["files"])):
            for n, v in sweep.items():
                what = f"{int(n)} MB" if label == "size" else f"{int(n)} files"
                rows.append((what, *(f"{v[op]['seconds']:.2f} s / {v[op]['peak_rss_mb']:.0f} MB"
                                     for op in ("add", "push", "pull", "materialize"))))  # fmt: skip
        out.append("## 6. Scale\n\nTime and peak memory of each operation as a whole process, by model size (one "
                   "file) and by file count (64 MB in all).\n\n"
                   + _table(("model", "add", "push", "pull", "materialize"), rows)
                   + "\n\n![scale](scale.png)")  # fmt: skip
    rc = r.get("racing")
    if rc:
        one = rc["pack_bytes_one_pull"]
        rows = [(n, f"{v['seconds']:.2f} s", _mb(v["pack_bytes"]), f"{v['pack_bytes'] / one:.2f}x")
                for n, v in rc["counts"].items()]  # fmt: skip
        out.append(f"## 7. Concurrency\n\nN services on one host first-access the same cold {_mb(rc['model_bytes'])} "
                   "model at once; a lock per model lets one fetch while the others wait, so the bytes fetched "
                   "should stay those of one service alone (N = 1).\n\n"
                   + _table(("processes", "until all have it", "pack bytes fetched", "vs one pull"), rows))  # fmt: skip
    if r.get("fanout"):
        out.append(fanout.section(r["fanout"]))
    if r.get("lifecycle"):
        out.append(lifecycle.section(r["lifecycle"]))
    if r.get("archive"):
        out.append(archive.section(r["archive"]))
    if r.get("trust"):
        out.append(trust.section(r["trust"]))
    if r.get("peers"):
        out.append(peers.section(r["peers"]))
    if r.get("registry"):
        out.append(registry.section(r["registry"]))
    if r.get("landing"):
        out.append(landing.section(r["landing"]))
    if r.get("mutation"):
        out.append(mutation.section(r["mutation"]))
    if r.get("soak"):
        out.append(soak.section(r["soak"]))
    return out


def previous_ratios(report_md: str) -> dict[str, float]:
    """The headline ratios of an earlier report (its markdown table, whatever shape its results had)."""
    out = {}
    table = report_md.split("## Headline", 1)[-1].split("\n\n")[1] if "## Headline" in report_md else ""
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        ratio = _ratio(cells[3]) if len(cells) >= 4 else None
        if ratio is not None:
            out[cells[0]] = ratio
    return out


def _ratio(cell: str) -> float | None:
    try:
        return float(cell.strip().removesuffix("x"))
    except ValueError:
        return None


def moved(before: dict[str, float], r: dict, limit: float = 0.2) -> list[str]:
    """The headline figures whose ratio moved more than ``limit`` since the earlier report ``before``."""
    out = []
    for row in headline(r):
        old, new = before.get(row[0]), _ratio(row[3])
        if old and new is not None and abs(new - old) / old > limit:
            out.append(f"{row[0]}: {old:.3g}x → {new:.3g}x ({(new - old) / old:+.0%})")
    return out


def render(r: dict, mode: str, seconds: float, before: dict[str, float] | None = None) -> str:
    """The report; ``before``: the previous report's headline ratios, to say which moved more than 20%."""
    m = r["machine"]
    rerun = f" for {', '.join(r['rerun'])}, the rest as the run before" if r.get("rerun") else ""
    head = (f"# cas benchmarks\n\nMode: {mode}, {seconds:.0f} s{rerun}. Machine: {m['cpus']} CPUs ({m['cpu']}), "
            f"{m['memory_gb']} GB, Python {m['python']}, {m['platform']}. Reproduce: `python -m benchmarks"
            f"{' --quick' if mode == 'quick' else ''}`. Every ratio is against a baseline measured in the same run; "
            "timings are medians of several runs (min / median / max where shown).\n\n## Headline\n\n")  # fmt: skip
    body = head + _table(("measure", "cas", "baseline", "ratio", "goal"), headline(r))
    if before:
        changes = moved(before, r)
        body += ("\n\nMoved more than 20% since the previous report:\n\n" + "\n".join(f"- {c}" for c in changes)
                 if changes else "\n\nNo headline ratio moved more than 20% since the previous report.")  # fmt: skip
    for name, error in r.get("failed", {}).items():
        body += f"\n\n**Scenario {name} failed:** {error}"
    if not r.get("plots"):
        body += "\n\nPlots were not drawn: matplotlib is not installed (`pip install -e '.[bench]'`)."
    return body + "\n\n" + "\n\n".join(sections(r)) + "\n"


def plots(r: dict, out: Path) -> list[str]:
    """Draw the PNG plots; returns their file names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if r.get("pull"):
        p = r["pull"]
        mb = p["model_bytes"] / 1e6
        ns = list(p["levels"])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ns, [mb / p["levels"][n]["cas_s"]["median"] for n in ns], "o-", label="cas pull")
        ax.plot(ns, [mb / p["levels"][n]["raw_s"]["median"] for n in ns], "s--", label="raw parallel download")
        ax.set(xscale="log", xlabel="requests in flight", ylabel="MB/s", title="Pull throughput")
        ax.legend()
        fig.savefig(out / "pull.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append("pull.png")
    if r.get("dedup"):
        d = {k: v for k, v in r["dedup"].items() if k != "base"}
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = range(len(d))
        ax.bar([x - 0.27 for x in xs], [v["raw_moved"] / 1e6 for v in d.values()], 0.27, label="cas moves (raw)")
        ax.bar(list(xs), [v["encoded_moved"] / 1e6 for v in d.values()], 0.27, label="cas on the wire")
        ax.bar([x + 0.27 for x in xs], [v["whole_file_bytes"] / 1e6 for v in d.values()], 0.27, label="whole-file")
        ax.set_xticks(list(xs), list(d), rotation=30, ha="right")
        ax.set(ylabel="MB", title="Bytes moved to a host holding the base")
        ax.legend()
        fig.savefig(out / "dedup.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append("dedup.png")
    if r.get("scale"):
        s = r["scale"]["size"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for op in ("add", "push", "pull", "materialize"):
            xs = [v["bytes"] / 1e6 for v in s.values()]
            axes[0].plot(xs, [v[op]["seconds"] for v in s.values()], "o-", label=op)
            axes[1].plot(xs, [v[op]["peak_rss_mb"] for v in s.values()], "o-", label=op)
        axes[0].set(xscale="log", yscale="log", xlabel="model MB", ylabel="seconds", title="Time by model size")
        axes[1].set(xscale="log", xlabel="model MB", ylabel="peak MB", title="Peak memory by model size")
        axes[0].legend()
        fig.savefig(out / "scale.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append("scale.png")
    if r.get("fanout"):
        made.append(fanout.plot(r["fanout"], out, plt))
    return made
