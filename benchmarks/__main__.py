"""Every benchmark scenario in one run, and a report people can read.

    python -m benchmarks [--quick] [--only latency,pull,...]

Builds its data (synthetic safetensors, the packaged MiniLM model), runs
each scenario against its baseline in the same run, and writes
``benchmarks/results/report.md``, ``results.json`` (every figure) and PNG
plots; the latest full run's are committed, quick runs go to
``benchmarks/results/quick/``.  ``--only`` reruns some scenarios and keeps
the others' figures from the last report of the same mode.  ``--quick`` shrinks sizes and repetitions
to finish in about two minutes; CI runs it as a smoke test and never
asserts a time.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import (
    archive,
    codecs,
    dedup,
    fanout,
    ingest,
    landing,
    latency,
    lifecycle,
    mutation,
    peers,
    pull,
    racing,
    registry,
    report,
    scale,
    soak,
    trust,
)
from benchmarks.harness import RESULTS, reset
from tests.support import synth
from tests.support.procs import REPO
from tests.support.synth import minilm_path

SCENARIOS = (
    "latency",
    "ingest",
    "pull",
    "dedup",
    "codec",
    "scale",
    "racing",
    "fanout",
    "archive",
    "lifecycle",
    "trust",
    "peers",
    "registry",
    "landing",
    "mutation",
    "soak",
)
# The soak is no measurement but a bounded run of half an hour against invariants, and the mutation job runs the
# suite's tests again per mutant (10 minutes): only ``--only soak`` / ``--only mutation`` run them.
DEFAULT = tuple(s for s in SCENARIOS if s not in ("soak", "mutation"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few runs: about two minutes")
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but soak and mutation)",
    )
    ap.add_argument("--minutes", type=float, help="how long the soak runs (default: $CAS_SOAK_MINUTES, else 30; "
                    "2 with --quick)")  # fmt: skip
    ap.add_argument("--out", type=Path, help="where report.md, results.json and plots go "
                    "(default benchmarks/results, or benchmarks/results/quick with --quick)")  # fmt: skip
    args = ap.parse_args(argv)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    started = time.perf_counter()
    # what an installed package has (pip compiles it): with PYTHONDONTWRITEBYTECODE set, every process of an
    # editable checkout would compile what changed since its last .pyc, a cost no user pays
    for package in ("cas", "descriptor"):
        compileall.compile_dir(REPO / package, quiet=2)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-"))
    mode = "quick" if args.quick else "full"
    results = earlier_results(out_dir / "results.json", mode, chosen) if args.only != ",".join(DEFAULT) else {}
    results.update({"machine": report.machine(), "mode": mode, **({"rerun": chosen} if results else {})})
    try:
        minilm = minilm_path() if set(chosen) - {"soak"} else None

        @functools.cache
        def big() -> Path:  # built once, and only when a scenario needs it
            return synth.write_model_dir(work / "model", synth.model_tensors(51, (128 if args.quick else 1024) << 20))

        runners = {
            "latency": lambda: latency.run(work, minilm, args.quick),
            "ingest": lambda: ingest.run(work, big(), args.quick),
            "pull": lambda: pull.run(work, big(), args.quick),
            "dedup": lambda: dedup.run(work, args.quick),
            "codec": lambda: codecs.run(work, args.quick),
            "scale": lambda: scale.run(work, args.quick),
            "racing": lambda: racing.run(work, args.quick),
            "fanout": lambda: fanout.run(work, args.quick),
            "lifecycle": lambda: lifecycle.run(work, args.quick),
            "archive": lambda: archive.run(work, minilm, big(), args.quick),
            "trust": lambda: trust.run(work, minilm, args.quick),
            "peers": lambda: peers.run(work, args.quick),
            "registry": lambda: registry.run(work, args.quick),
            "landing": lambda: landing.run(work, args.quick),
            "mutation": lambda: mutation.run(work, args.quick),
            "soak": lambda: soak.run(work, args.quick, args.minutes),
        }
        for name in chosen:
            t = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            try:
                results[name] = runners[name]()
                if name == "soak" and results[name]["failures"]:  # a bug found: visible in the exit status too
                    results.setdefault("failed", {})[name] = f"{results[name]['failures']} failures (see its section)"
            except Exception as e:  # noqa: BLE001 - one broken scenario must not lose the others' figures
                traceback.print_exc()
                results.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"
            print(f"[{name}] {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    finally:
        reset(work)
    out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = report.plots(results, out_dir)
    elapsed = time.perf_counter() - started
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    earlier = out_dir / "report.md"
    before = report.previous_ratios(earlier.read_text()) if earlier.exists() else None
    (out_dir / "report.md").write_text(report.render(results, results["mode"], elapsed, before))
    print(f"wrote {out_dir / 'report.md'} in {elapsed:.0f} s")
    if results.get("failed"):
        print(f"failed scenarios: {', '.join(results['failed'])}", file=sys.stderr)
        return 1
    return 0


def earlier_results(path: Path, mode: str, chosen: list[str]) -> dict:
    """What a run of some scenarios keeps of the last report of its mode: every other scenario's figures, so
    ``--only trust`` updates one section instead of leaving a report of one."""
    try:
        earlier = json.loads(path.read_text(), object_hook=_int_keys)
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or earlier.get("mode") != mode:
        return {}
    failed = {k: v for k, v in earlier.get("failed", {}).items() if k not in chosen}
    kept = {k: v for k, v in earlier.items() if k in SCENARIOS and k not in chosen}
    return {**kept, **({"failed": failed} if failed else {})}


def _int_keys(d: dict) -> dict:
    """JSON made the scenarios' integer keys (concurrency levels, counts, sizes) strings: back to integers."""
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
