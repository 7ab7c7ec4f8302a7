"""Commands that carry a model as one file, where no repository reaches: export and import."""

from __future__ import annotations

import argparse
import sys

from . import output
from .output import Command, cache_of, size

TYPE_CHECKING = False  # typing and json cost a warm `cas` run 4 ms: imported where used

if TYPE_CHECKING:
    from typing import TextIO

    from ..sync.archive import ArchiveStats


def commands(cmd: Command) -> None:
    sp = cmd("export", _export, "write a model as one file ('-': stdout; cas export M:V - | ssh HOST cas import -)")
    sp.add_argument("tag")
    sp.add_argument("file", metavar="FILE|-")
    sp.add_argument("--json", action="store_true")
    sp = cmd("import", _import, "store the model of an export file (FILE '-': stdin), every chunk verified")
    sp.add_argument("file", metavar="FILE|-")
    sp.add_argument("--json", action="store_true")


def _export(args: argparse.Namespace) -> None:
    cache = cache_of(args)
    info = cache.get(args.tag)
    with output.progress(info.size, "export") as progress:
        s = cache.export_model(args.tag, args.file, progress=progress)
    _report(args, s, "exported", sys.stderr if args.file == "-" else sys.stdout)  # stdout carries the file


def _import(args: argparse.Namespace) -> None:
    total = output.PROGRESS_MIN_BYTES if sys.stderr.isatty() else 0
    with output.progress(total, "import", unknown_total=True) as progress:
        s = cache_of(args).import_model(args.file, progress=progress)
    _report(args, s, "imported", sys.stdout)


def _report(args: argparse.Namespace, s: ArchiveStats, verb: str, to: TextIO) -> None:
    """One line (or JSON) on what an export or import moved."""
    if args.json:
        doc = {**s.info.to_dict(), "stream_bytes": s.stream_bytes, "bytes_reused": s.bytes_reused, "seconds": s.seconds}
        import json

        print(json.dumps(doc, indent=2, sort_keys=True), file=to)
        return
    if verb == "imported" and s.bytes_reused == s.info.size:
        print(f"imported {s.info.tag} ({size(s.info.size)}): every file was here already, none written", file=to)
        return
    rate = s.info.size / s.seconds / 1e6 if s.seconds > 0 else 0.0
    moved = f"read {size(s.stream_bytes)}, reused {size(s.bytes_reused)} already here" if verb == "imported" \
        else f"wrote {size(s.stream_bytes)}"  # fmt: skip
    print(f"{verb} {s.info.tag} ({size(s.info.size)}): {moved}, {s.seconds:.2f}s, {rate:.0f} MB/s", file=to)
