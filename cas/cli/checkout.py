"""Commands that lay a version into a directory of the user's: checkout, and status to compare one with it."""

from __future__ import annotations

import argparse

from . import output
from .output import Command, cache_of, print_json, size


def commands(cmd: Command) -> None:
    sp = cmd("checkout", _checkout, "lay a model's files into a folder of yours (only what changed; pulls if need be)")
    sp.add_argument("tag")
    sp.add_argument("dir")
    output.selection_options(sp)
    sp.add_argument(
        "--link",
        action="store_true",
        help="read-only hardlinks to the cache's files (no copy; do not edit them) instead of copies",
    )
    sp.add_argument("--force", action="store_true", help="overwrite or remove files you changed there")
    output.remote_option(sp, "repository to pull from (default, or --remote alone: $CAS_REMOTE)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("status", _status, "say whether a folder still matches the version checked out there (exit 1 if not)")
    sp.add_argument("dir")
    sp.add_argument("--tag", help="compare with this version instead of the one checked out there")
    output.selection_options(sp)
    sp.add_argument("--json", action="store_true")  # fmt: skip


def _checkout(args: argparse.Namespace) -> None:
    r = cache_of(args).checkout(args.tag, args.dir, include=args.include, exclude=args.exclude, link=args.link,
                                force=args.force, remote=args.remote)  # fmt: skip
    if args.json:
        print_json(r.to_dict())
        return
    how = "hardlinked" if r.mode == "link" else "copied"
    print(f"checked out {r.info.tag} into {r.path}: {how} {len(r.written)} files ({size(r.bytes_written)}), "
          f"removed {len(r.removed)}, {r.kept} already there")  # fmt: skip


def _status(args: argparse.Namespace) -> int:
    s = cache_of(args).status(args.dir, args.tag, include=args.include, exclude=args.exclude)
    if args.json:
        print_json(s.to_dict())
    else:
        for kind in ("modified", "missing", "untracked"):
            for path in getattr(s, kind):
                print(f"{kind}: {path}")
        state = "clean" if s.clean else "differs"
        print(f"{state}: {s.path} against {s.tag}")
    return 0 if s.clean else 1
