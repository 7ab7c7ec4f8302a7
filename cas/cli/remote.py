"""Commands on a repository itself: prune (``rm --remote`` lives with ``rm``, in ``models``)."""

from __future__ import annotations

import argparse

from .output import Command, print_json, remote_option, size


def commands(cmd: Command) -> None:
    sp = cmd("prune", _prune, "delete what no ref reaches in a repository, in two phases: mark now, delete after "
                              "the grace period; repack packs mostly dead")  # fmt: skip
    remote_option(sp)
    sp.add_argument("--grace", default="1d", metavar="DURATION",
                    help="delete only what was marked this long ago and is still unreachable: 0, 30m, 12h, 1d, 2w "
                         "(default: 1d; longer than any push or pull)")  # fmt: skip
    sp.add_argument("--max-unused", type=float, default=10.0, metavar="PERCENT",
                    help="repack live packs with more dead bytes than this (default: 10)")  # fmt: skip
    sp.add_argument("--dry-run", action="store_true", help="report what would be marked, deleted and repacked")
    sp.add_argument("--json", action="store_true")


def _prune(args: argparse.Namespace) -> None:
    from ..sync.prune import parse_duration, prune

    report = prune(args.remote, grace=parse_duration(args.grace), max_unused=args.max_unused / 100,
                   dry_run=args.dry_run)  # fmt: skip
    parts = {"marked": report.marked, "deleted": report.deleted, "repacked": report.repacked, "kept": report.kept}
    if args.json:
        print_json({"dry_run": report.dry_run, **{k: {"count": u.count, "bytes": u.bytes} for k, u in parts.items()}})
        return
    would = "would be " if report.dry_run else ""
    print(f"marked:   {report.marked.count} objects {would}waiting for the grace period ({size(report.marked.bytes)} "
          "of packs)")  # fmt: skip
    print(f"deleted:  {report.deleted.count} objects {would}deleted ({size(report.deleted.bytes)} of packs)")
    print(f"repacked: {report.repacked.count} packs {would}repacked ({size(report.repacked.bytes)} of live chunks "
          "copied)")  # fmt: skip
    print(f"kept:     {report.kept.count} packs in use ({size(report.kept.bytes)})")
    if report.dry_run:
        print("dry run: nothing was changed")
