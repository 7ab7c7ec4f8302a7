"""Commands on the models of the local cache: add, list, show, materialize, rm, verify (rm and verify also of a
repository, with --remote)."""

from __future__ import annotations

import argparse
import os
import time

from . import output
from .output import Command, cache_of, print_json, size, table

TYPE_CHECKING = False

if TYPE_CHECKING:
    from ..cache import Cache
    from ..content.ref import ModelInfo
    from ..trust.audit import SignatureReport


def commands(cmd: Command) -> None:
    sp = cmd("add", _add, "store a directory or file under a tag")
    sp.add_argument("path")
    sp.add_argument("tag", metavar="NAME[:VERSION]")
    sp.add_argument("--label", action="append", default=[], metavar="K=V")
    sp.add_argument("--metadata", action="append", default=[], metavar="K=V", help="value parsed as JSON if it can be")
    sp.add_argument("--json", action="store_true")
    sp = cmd("list", _list, "list stored models, newest first")
    sp.add_argument("name", nargs="?")
    output.remote_option(sp, "list a repository instead of the local cache (no URL: $CAS_REMOTE's)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("show", _show, "show a model's files, sizes, root and labels")
    sp.add_argument("tag")
    sp.add_argument("--json", action="store_true")
    sp = cmd("materialize", _materialize, "print the model's read-only directory; pulls the model if it is not here")
    sp.add_argument("tag")
    output.remote_option(sp, "repository to pull from (default, or --remote alone: $CAS_REMOTE)")
    output.selection_options(sp)
    sp = cmd("rm", _rm, "remove models (NAME:VERSION, NAME:latest, or NAME for every version)")
    sp.add_argument("tags", nargs="+", metavar="TAG")
    output.remote_option(sp, "remove the refs from this repository (no URL: $CAS_REMOTE's; cas prune deletes the data)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("verify", _verify, "re-hash blobs and snapshots and repair what can be repaired; or check a repository")
    sp.add_argument("tag", nargs="?")
    sp.add_argument("--no-repair", action="store_true", help="only report")
    output.remote_option(sp, "check this repository instead of the cache (no URL: $CAS_REMOTE's; never repairs)")
    sp.add_argument("--deep", action="store_true", help="with --remote: also read every pack and check its chunks")
    sp.add_argument("--signatures", action="store_true",
                    help="with --remote: also say who signed each version (under $CAS_TRUST, if set)")  # fmt: skip
    sp.add_argument("--json", action="store_true")


def _add(args: argparse.Namespace) -> None:
    cache = cache_of(args)
    labels = output.pairs(args.label, "label", False)
    metadata = output.pairs(args.metadata, "metadata", True)
    start = time.perf_counter()
    with output.progress(output.input_size(args.path), "add") as progress:
        info = cache.add(args.path, args.tag, labels=labels, metadata=metadata, progress=progress)
    elapsed = time.perf_counter() - start
    if args.json:
        print_json(info.to_dict())
    else:
        rate = info.size / elapsed / 1e6 if elapsed > 0 else 0.0
        print(f"{info.tag}  {size(info.size)} in {info.file_count} files  ({elapsed:.2f}s, {rate:.0f} MB/s)")


def _list(args: argparse.Namespace) -> None:
    if args.remote is not None:
        infos = _list_remote(args.remote, args.name)
    else:
        infos = cache_of(args).list(args.name)
    here = {} if args.remote is not None else _files_here(cache_of(args), infos)
    if args.json:
        print_json([{**i.to_dict(), **({"files_here": here[i.tag]} if i.tag in here else {})} for i in infos])
        return
    rows = [[i.tag, size(i.size), f"{here[i.tag]} of {i.file_count}" if i.tag in here else str(i.file_count),
             output.when(i.created), i.root[:12], output.labels(i)] for i in infos]  # fmt: skip
    table(["TAG", "SIZE", "FILES", "CREATED", "ROOT", "LABELS"], rows)


def _list_remote(remote: str, name: str | None) -> list[ModelInfo]:
    """A bare word after ``--remote`` is most often a model's name typed in the URL's place: say how to list it."""
    from ..errors import RepoError
    from ..repo.repository import list_remote

    try:
        return list_remote(remote or None, name)
    except RepoError as e:
        bare_word = name is None and "/" not in remote and ":" not in remote and os.environ.get("CAS_REMOTE")
        if not bare_word or "(no such folder)" not in str(e):
            raise
        raise RepoError(f"{e}; to list the model {remote!r} of $CAS_REMOTE, put its name first: "
                        f"cas list {remote} --remote") from None  # fmt: skip


def _files_here(cache: Cache, infos: list[ModelInfo]) -> dict[str, int]:
    """How many files each partial version has here (a whole one has all of them)."""
    return {i.tag: len(cache.files_here(i, cache.tree(i))) for i in infos if i.partial}


def _show(args: argparse.Namespace) -> None:
    cache = cache_of(args)
    info = cache.get(args.tag)
    tree = cache.tree(info)
    here = {f.path for f in cache.files_here(info, tree)}
    files = [
        {
            "path": f.path,
            "size": f.size,
            "executable": f.executable,
            "file_id": f.file_id.hex(),
            "chunks": f.chunk_count,
            "here": f.path in here,
        }
        for f in tree.files
    ]
    if args.json:
        print_json({**info.to_dict(), "files": files})
        return
    print(f"tag:      {info.tag}")
    print(f"root:     {info.root}")
    print(f"size:     {size(info.size)} ({info.size} bytes) in {info.file_count} files")
    if info.partial:
        held = sum(f.size for f in tree.files if f.path in here)
        print(f"here:     {len(here)} of {info.file_count} files ({size(held)}): partial, "
              f"'cas pull {info.tag}' fetches the rest")  # fmt: skip
    print(f"created:  {output.when(info.created)}")
    print(f"labels:   {output.labels(info) or '-'}")
    if info.metadata:
        import json

        print(f"metadata: {json.dumps(info.metadata, sort_keys=True)}")
    print()
    table(
        ["PATH", "SIZE", "CHUNKS", "FILE ID", ""],
        [[f.path, size(f.size), str(f.chunk_count), f.file_id.hex()[:16],
          "not here" if info.partial and f.path not in here else ""] for f in tree.files],
    )  # fmt: skip


def _materialize(args: argparse.Namespace) -> None:
    cache = cache_of(args)
    info = cache.resolve(args.tag, remote=args.remote, include=args.include, exclude=args.exclude)
    print(cache.materialize(info, include=args.include, exclude=args.exclude))


def _rm(args: argparse.Namespace) -> None:
    if args.remote is not None:
        from ..sync.prune import remove_remote

        removed = remove_remote(args.tags, args.remote or None)
    else:
        cache = cache_of(args)
        removed = [info for tag in args.tags for info in cache.delete(tag)]
    if args.json:
        print_json([i.tag for i in removed])
    else:
        for i in removed:
            print(f"removed {i.tag}")


def _verify(args: argparse.Namespace) -> int:
    if args.remote is not None:
        return _verify_remote(args)
    report = cache_of(args).verify(args.tag, repair=not args.no_repair)
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "missing": report.missing,
                "tampered": report.tampered,
                "orphaned": report.orphaned,
                "repaired": report.repaired,
                "interrupted": report.interrupted,
            }
        )
    else:
        for kind in ("missing", "tampered", "orphaned", "repaired", "interrupted"):
            for line in getattr(report, kind):
                print(f"{kind}: {line}")
        state = "ok" if report.ok else "DAMAGED"
        print(f"{state}: checked {report.checked} models")
    return 0 if report.ok else 1


def _verify_remote(args: argparse.Namespace) -> int:
    from ..repo.check import check_repository

    report = check_repository(args.remote or None, deep=args.deep)
    signed = _signatures(args) if args.signatures else None
    if args.json:
        doc = {"ok": report.ok, "refs": report.refs, "packs": report.packs, "problems": report.problems,
               "orphans": report.orphans}  # fmt: skip
        if signed is not None:
            versions = [{"tag": f.tag, "role": f.role, "keys": list(f.keys), "problem": f.problem}
                        for f in signed.findings]  # fmt: skip
            doc["signatures"] = {"ok": signed.ok, "under": signed.under, "latest": signed.latest, "versions": versions}
        print_json(doc)
    else:
        for line in report.problems:
            print(f"damaged: {line}")
        for line in report.orphans:
            print(f"orphaned: {line}")
        state = "ok" if report.ok else "DAMAGED"
        print(f"{state}: checked {report.refs} models and {report.packs} packs{' (deep)' if args.deep else ''}")
        if signed is not None:
            _print_signatures(signed)
    return 0 if report.ok and (signed is None or signed.ok) else 1


def _signatures(args: argparse.Namespace) -> SignatureReport:
    from ..trust.audit import signature_report

    return signature_report(cache_of(args), args.remote or None)


def _print_signatures(report: SignatureReport) -> None:
    for f in report.findings:
        if f.problem:
            print(f"UNSIGNED: {f.tag}: {f.problem}")
        else:
            print(f"signed: {f.tag} by {f.role} ({', '.join(k[:16] for k in f.keys)})")
    for line in report.latest:
        print(f"LATEST: {line}")
    signed = sum(not f.problem for f in report.findings)
    state = "ok" if report.ok else "NOT ALL SIGNED"
    print(f"{state}: {signed} of {len(report.findings)} versions signed, checked against {report.under}")
