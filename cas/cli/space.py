"""Commands on the room a cache takes: du (who holds what) and gc (free it, fit a budget)."""

from __future__ import annotations

import argparse
import os

from .output import Command, cache_of, print_json, size, table, when


def commands(cmd: Command) -> None:
    sp = cmd("du", _du, "show what each model version takes on disk, what only it holds, and the dedup saving")
    sp.add_argument("name", nargs="?", help="only the versions of this model")
    sp.add_argument("--json", action="store_true")
    sp = cmd("gc", _gc, "remove what no model needs; with --max-size, evict least recently used pulled versions")
    sp.add_argument("--max-size", metavar="SIZE", default=os.environ.get("CAS_MAX_SIZE") or None,
                    help="the budget, e.g. 50G or 1.5TiB (default: $CAS_MAX_SIZE; none: evict nothing)")  # fmt: skip
    sp.add_argument("--dry-run", action="store_true", help="say what would go and the bytes freed; change nothing")
    sp.add_argument("--json", action="store_true")


def _du(args: argparse.Namespace) -> None:
    report = cache_of(args).du(args.name)
    if args.json:
        print_json(report.to_dict())
        return
    rows = [[v.info.tag, size(v.info.size), size(v.on_disk), size(v.unique), size(v.shared), when(v.last_used),
             "here only" if not v.remotes else v.remotes[-1]] for v in report.versions]  # fmt: skip
    table(["TAG", "SIZE", "ON DISK", "ONLY IT", "SHARED", "LAST USED", "CAN COME BACK FROM"], rows)
    saving = report.saving / report.logical if report.logical else 0.0
    print(f"\n{len(report.versions)} versions: {size(report.logical)} of files in {size(report.stored)} of blobs "
          f"(whole-file dedup saves {size(report.saving)}, {saving:.0%}); distinct chunks: "
          f"{size(report.distinct_chunks)}")  # fmt: skip
    leftovers = "unknown (the cache is busy)" if report.leftovers is None else size(report.leftovers)
    print(f"snapshots: {report.snapshots}; leftovers 'cas gc' would free: {leftovers}; "
          f"cache on disk: {size(report.total)}")  # fmt: skip


def _gc(args: argparse.Namespace) -> None:
    """Over budget is no failure: gc freed what it may, and says what stayed and why (``over_budget`` in JSON)."""
    report = cache_of(args).gc(args.max_size, dry_run=args.dry_run)
    if args.json:
        print_json(report.to_dict())
        return
    would = "would remove" if report.dry_run else "removed"
    for path in report.removed:
        print(f"{would} {path}")
    for info in report.evicted:
        print(f"{'would evict' if report.dry_run else 'evicted'} {info.tag} ({size(info.size)})")
    print(f"{'would free' if report.dry_run else 'freed'} {size(report.freed)}: cache {size(report.size_before)} -> "
          f"{size(report.size_after)}")  # fmt: skip
    if report.over_budget:
        print(f"still over the budget of {size(report.max_size or 0)}; kept:")
        for k in report.kept:
            print(f"  {k.tag}: {k.reason}")
