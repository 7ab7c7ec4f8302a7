"""What every command shares: the cache a command works on, KEY=VALUE flags, tables, sizes, progress bars."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from ..cache import Cache
from ..content.ref import ModelInfo
from ..errors import InvalidInput
from ..local.space import format_size

TYPE_CHECKING = False  # typing and json cost a warm `cas` run 4 ms: imported where used
if TYPE_CHECKING:
    from typing import Any

PROGRESS_MIN_BYTES = 32 << 20

# C0 and C1 control characters and DEL, as \xNN: a label, a path or a message that a repository, an export file
# or a foreign store wrote must not move the cursor, retitle or clear the user's terminal, or fake a line.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROLS_BUT_LINES = {c: e for c, e in _CONTROLS.items() if c not in (0x09, 0x0A)}

# How a group of commands registers one: cmd(name, function, help) -> its argparse parser, to add arguments to.
Command = Callable[[str, Callable[[argparse.Namespace], "int | None"], str], argparse.ArgumentParser]


def cache_of(args: argparse.Namespace) -> Cache:
    """The cache ``--home`` names, else the default one (``$CAS_HOME``, ``~/.cache/cas``)."""
    return Cache(args.home) if args.home else Cache()


def remote_option(sp: argparse.ArgumentParser, help: str = "repository (default, or --remote alone: $CAS_REMOTE)"
                  ) -> None:  # fmt: skip
    """``--remote [URL]``, the same on every command: given alone, it means ``$CAS_REMOTE``'s repository."""
    sp.add_argument("--remote", nargs="?", const="", metavar="URL", help=help)


def selection_options(sp: argparse.ArgumentParser) -> None:
    """--include/--exclude, the same on every command that takes some of a model's files."""
    sp.add_argument(
        "--include",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATTERN",
        help="only the files these gitignore-style patterns match (e.g. '*.json' model.fp16.safetensors)",
    )
    sp.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="PATTERN",
                    help="leave out the files these patterns match (e.g. 'original/' '*.bin')")  # fmt: skip


def pairs(items: list[str], what: str, parse_value: bool) -> dict[str, Any]:
    """``--label K=V`` flags as a dict; values parsed as JSON where they can be (``--metadata``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--{what} {item!r}: expected KEY=VALUE")
        if parse_value:
            try:
                import json

                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def printable(text: str) -> str:
    """``text`` with every control character escaped (newlines and tabs too: one field stays one field)."""
    return text.translate(_CONTROLS)


class EscapedStream:
    """A text stream that escapes control characters but newlines and tabs: whatever a command prints is
    shown, never obeyed.  ``--json`` output passes unchanged (JSON escapes control characters itself)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(_CONTROLS_BUT_LINES))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def print_json(value: Any) -> None:
    import json

    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def table(header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("(none)", file=sys.stderr)
        return
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


size = format_size  # bytes for people: what every command prints


def when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def labels(info: ModelInfo) -> str:
    return printable(",".join(f"{k}={v}" for k, v in sorted(info.labels.items())))


def input_size(path: str) -> int:
    """The bytes under ``path``, for a progress bar's total (unreadable files count nothing)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for dirpath, _, files in os.walk(path, followlinks=True):
        for n in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, n))
            except OSError:
                pass
    return total


class progress:
    """A tqdm bar on a terminal for large inputs; otherwise nothing at all."""

    def __init__(self, total: int, desc: str, unknown_total: bool = False):
        self.bar = None
        if total >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=None if unknown_total else total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
            )

    def __enter__(self) -> Callable[[int], None] | None:
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
