"""The ``cas`` command line.

Errors are one line on stderr and exit code 1 (usage errors: 2); ``--debug``
shows the traceback.  Every listing takes ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .cache import Cache
from .errors import CasError, InvalidInput
from .ref import ModelInfo
from .repo import CONCURRENCY

PROGRESS_MIN_BYTES = 32 << 20


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("cas: interrupted", file=sys.stderr)
        return 130
    except (CasError, OSError) as e:
        if args.debug:
            raise
        print(f"cas: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, CasError):
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror or e}{where}"
    return " ".join(str(e).split())


Command = Callable[[str, Callable[[argparse.Namespace], "int | None"], str], argparse.ArgumentParser]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cas", description="Content-addressed cache for ML models.")
    _global_flags(p, default=None)
    # The same flags after the command; SUPPRESS keeps them from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=func)
        return sp

    _cache_commands(cmd)
    _repository_commands(cmd)
    return p


def _cache_commands(cmd: Command) -> None:
    sp = cmd("add", _add, "store a directory or file under a tag")
    sp.add_argument("path")
    sp.add_argument("tag", metavar="NAME[:VERSION]")
    sp.add_argument("--label", action="append", default=[], metavar="K=V")
    sp.add_argument("--metadata", action="append", default=[], metavar="K=V", help="value parsed as JSON if it can be")
    sp.add_argument("--json", action="store_true")
    sp = cmd("list", _list, "list stored models, newest first")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--remote", metavar="URL", help="list a repository instead of the local cache")
    sp.add_argument("--json", action="store_true")
    sp = cmd("show", _show, "show a model's files, sizes, root and labels")
    sp.add_argument("tag")
    sp.add_argument("--json", action="store_true")
    sp = cmd("materialize", _materialize, "print the model's read-only directory; pulls the model if it is not here")
    sp.add_argument("tag")
    sp.add_argument("--remote", metavar="URL", help="repository to pull from (default: $CAS_REMOTE)")
    sp = cmd("rm", _rm, "remove models (NAME:VERSION, NAME:latest, or NAME for every version)")
    sp.add_argument("tags", nargs="+", metavar="TAG")
    sp.add_argument("--json", action="store_true")
    sp = cmd("verify", _verify, "re-hash blobs and snapshots and repair what can be repaired; or check a repository")
    sp.add_argument("tag", nargs="?")
    sp.add_argument("--no-repair", action="store_true", help="only report")
    sp.add_argument("--remote", metavar="URL", help="check this repository instead of the cache (never repairs)")
    sp.add_argument("--deep", action="store_true", help="with --remote: also read every pack and check its chunks")
    sp.add_argument("--json", action="store_true")


def _repository_commands(cmd: Command) -> None:
    sp = cmd("push", _push, "upload a model to a repository (only what it lacks)")
    sp.add_argument("tag")
    sp.add_argument("--remote", metavar="URL", help="repository (default: $CAS_REMOTE)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("pull", _pull, "fetch a model from a repository (only what no local file holds)")
    sp.add_argument("tag")
    sp.add_argument("--remote", metavar="URL", help="repository (default: $CAS_REMOTE)")
    sp.add_argument("--concurrency", type=int, default=CONCURRENCY, help=f"range requests in flight ({CONCURRENCY})")
    sp.add_argument("--json", action="store_true")
    sp = cmd("serve", _serve, "serve a repository folder over HTTP")
    sp.add_argument("dir")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--token-file", metavar="FILE",
                    help="bearer token for writes (default: $CAS_TOKEN; none: read-only)")  # fmt: skip
    sp.add_argument("--read-token", action="store_true", help="require the token for reads too")


def _global_flags(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--home", metavar="DIR", default=default, help="cache root (default: $CAS_HOME, else ~/.cache/cas)")
    p.add_argument("--debug", action="store_true", default=default or False, help="show tracebacks")


def _cache(args: argparse.Namespace) -> Cache:
    return Cache(args.home) if args.home else Cache()


def _pairs(items: list[str], what: str, parse_value: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--{what} {item!r}: expected KEY=VALUE")
        if parse_value:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def _add(args: argparse.Namespace) -> None:
    cache = _cache(args)
    labels = _pairs(args.label, "label", False)
    metadata = _pairs(args.metadata, "metadata", True)
    start = time.perf_counter()
    with _progress(_input_size(args.path), "add") as progress:
        info = cache.add(args.path, args.tag, labels=labels, metadata=metadata, progress=progress)
    elapsed = time.perf_counter() - start
    if args.json:
        _print_json(info.to_dict())
    else:
        rate = info.size / elapsed / 1e6 if elapsed > 0 else 0.0
        print(f"{info.tag}  {_size(info.size)} in {info.file_count} files  ({elapsed:.2f}s, {rate:.0f} MB/s)")


def _list(args: argparse.Namespace) -> None:
    if args.remote:
        from .repo.repository import list_remote

        infos = list_remote(args.remote, args.name)
    else:
        infos = _cache(args).list(args.name)
    if args.json:
        _print_json([i.to_dict() for i in infos])
        return
    rows = [[i.tag, _size(i.size), str(i.file_count), _when(i), i.root[:12], _labels(i)] for i in infos]
    _table(["TAG", "SIZE", "FILES", "CREATED", "ROOT", "LABELS"], rows)


def _sync_report(args: argparse.Namespace, info: ModelInfo, moved: tuple[str, int], kept: tuple[str, int],
                 seconds: float) -> None:  # fmt: skip
    """One line (or JSON) on what a push or pull moved: (what, bytes) sent or fetched, and kept."""
    if args.json:
        _print_json({**info.to_dict(), "bytes_transferred": moved[1], "bytes_reused": kept[1], "seconds": seconds})
        return
    rate = moved[1] / seconds / 1e6 if seconds > 0 else 0.0
    verb = "pushed" if moved[0] == "uploaded" else "pulled"
    print(f"{verb} {info.tag} ({_size(info.size)}): {moved[0]} {_size(moved[1])}, {kept[0]} {_size(kept[1])}, "
          f"{seconds:.2f}s, {rate:.0f} MB/s")  # fmt: skip


def _push(args: argparse.Namespace) -> None:
    cache = _cache(args)
    info = cache.get(args.tag)
    with _progress(info.size, "push") as progress:
        s = cache.push(args.tag, args.remote, progress=progress)
    _sync_report(args, s.info, ("uploaded", s.bytes_uploaded), ("already in the repository", s.bytes_present),
                 s.seconds)  # fmt: skip


def _pull(args: argparse.Namespace) -> None:
    with _progress(PROGRESS_MIN_BYTES if sys.stderr.isatty() else 0, "pull", unknown_total=True) as progress:
        s = _cache(args).pull(args.tag, args.remote, concurrency=args.concurrency, progress=progress)
    _sync_report(args, s.info, ("fetched", s.bytes_fetched), ("reused from local files", s.bytes_reused), s.seconds)


def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .server import serve

    token = os.environ.get("CAS_TOKEN") or None
    if args.token_file:
        token = Path(args.token_file).read_text().strip() or None
    if args.read_token and not token:
        raise InvalidInput("--read-token needs a token: --token-file FILE or CAS_TOKEN")
    serve(Path(args.dir), host=args.host, port=args.port, token=token, read_token=args.read_token)


def _show(args: argparse.Namespace) -> None:
    cache = _cache(args)
    info = cache.get(args.tag)
    tree = cache.tree(info)
    files = [
        {
            "path": f.path,
            "size": f.size,
            "executable": f.executable,
            "file_id": f.file_id.hex(),
            "chunks": f.chunk_count,
        }
        for f in tree.files
    ]
    if args.json:
        _print_json({**info.to_dict(), "files": files})
        return
    print(f"tag:      {info.tag}")
    print(f"root:     {info.root}")
    print(f"size:     {_size(info.size)} ({info.size} bytes) in {info.file_count} files")
    print(f"created:  {_when(info)}")
    print(f"labels:   {_labels(info) or '-'}")
    if info.metadata:
        print(f"metadata: {json.dumps(info.metadata, sort_keys=True)}")
    print()
    _table(
        ["PATH", "SIZE", "CHUNKS", "FILE ID"],
        [[f["path"], _size(f["size"]), str(f["chunks"]), f["file_id"][:16]] for f in files],
    )


def _materialize(args: argparse.Namespace) -> None:
    cache = _cache(args)
    print(cache.materialize(cache.resolve(args.tag, remote=args.remote)))


def _rm(args: argparse.Namespace) -> None:
    cache = _cache(args)
    removed = [info for tag in args.tags for info in cache.delete(tag)]
    if args.json:
        _print_json([i.tag for i in removed])
    else:
        for i in removed:
            print(f"removed {i.tag}")


def _verify(args: argparse.Namespace) -> int:
    if args.remote:
        return _verify_remote(args)
    report = _cache(args).verify(args.tag, repair=not args.no_repair)
    if args.json:
        _print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "missing": report.missing,
                "tampered": report.tampered,
                "orphaned": report.orphaned,
                "repaired": report.repaired,
            }
        )
    else:
        for kind in ("missing", "tampered", "orphaned", "repaired"):
            for line in getattr(report, kind):
                print(f"{kind}: {line}")
        state = "ok" if report.ok else "DAMAGED"
        print(f"{state}: checked {report.checked} models")
    return 0 if report.ok else 1


def _verify_remote(args: argparse.Namespace) -> int:
    from .repo.check import check_repository

    report = check_repository(args.remote, deep=args.deep)
    if args.json:
        _print_json({"ok": report.ok, "refs": report.refs, "packs": report.packs, "problems": report.problems,
                     "orphans": report.orphans})  # fmt: skip
    else:
        for line in report.problems:
            print(f"damaged: {line}")
        for line in report.orphans:
            print(f"orphaned: {line}")
        state = "ok" if report.ok else "DAMAGED"
        print(f"{state}: checked {report.refs} models and {report.packs} packs{' (deep)' if args.deep else ''}")
    return 0 if report.ok else 1


# -- output helpers ---------------------------------------------------------


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _table(header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("(none)", file=sys.stderr)
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


def _when(info: ModelInfo) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created))


def _labels(info: ModelInfo) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(info.labels.items()))


def _input_size(path: str) -> int:
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


class _progress:
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


if __name__ == "__main__":
    sys.exit(main())
