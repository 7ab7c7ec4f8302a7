"""Commands between the cache and repositories: push, pull, and serving a repository folder."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..content.ref import ModelInfo
from ..errors import InvalidInput
from ..local.cache import LocalCache
from ..repo import CONCURRENCY
from . import output
from .output import Command, cache_of, print_json, size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..trust.keys import Signer


def commands(cmd: Command) -> None:
    sp = cmd("push", _push, "upload a model to a repository (only what it lacks)")
    sp.add_argument("tag")
    output.remote_option(sp)
    sp.add_argument("--sign", action="append", default=[], metavar="KEY",
                    help="sign it there with this private key (repeatable; also $CAS_SIGNING_KEY)")  # fmt: skip
    sp.add_argument("--format", choices=("cas", "modelpack"), default="cas",
                    help="modelpack: to an oci:// registry as a ModelPack artifact, one raw layer per file, which "
                         "tools without cas read (default: cas's chunks and packs)")  # fmt: skip
    sp.add_argument("--json", action="store_true")
    sp = cmd("pull", _pull, "fetch a model from a repository (only what no local file holds)")
    sp.add_argument("tag")
    output.remote_option(sp)
    sp.add_argument("--concurrency", type=int, default=CONCURRENCY, help=f"range requests in flight ({CONCURRENCY})")
    sp.add_argument("--dry-run", action="store_true", help="say what would be fetched and reused; fetch nothing")
    output.selection_options(sp)
    sp.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="DIR",
        help="reuse chunks of files in this folder (repeatable; also $CAS_SEEDS), each one verified",
    )
    sp.add_argument("--json", action="store_true")
    sp = cmd("serve", _serve, "serve a repository folder over HTTP")
    sp.add_argument("dir")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--token-file", metavar="FILE",
                    help="bearer token for writes (default: $CAS_TOKEN; none: read-only)")  # fmt: skip
    sp.add_argument("--read-token", action="store_true", help="require the token for reads too")
    sp.add_argument("--max-connections-per-client", type=int, metavar="N",
                    help="connections one address may hold at once; more are answered 503 (256)")  # fmt: skip


def _report(args: argparse.Namespace, info: ModelInfo, moved: tuple[str, int], kept: tuple[str, int],
            seconds: float, here: bool = False, evicted: tuple[str, ...] | None = None) -> None:  # fmt: skip
    """One line (or JSON) on what a push or pull moved: (what, bytes) sent or fetched, and kept; ``here``: a pull
    of a version stored here already; ``evicted``: a pull's, the versions the size budget took out after it."""
    if args.json:
        print_json({**info.to_dict(), "bytes_transferred": moved[1], "bytes_reused": kept[1], "seconds": seconds,
                    **({"evicted": list(evicted)} if evicted is not None else {})})  # fmt: skip
        return
    verb = "pushed" if moved[0] == "uploaded" else "pulled"
    part = f", {info.file_count} files, partial" if info.partial else ""
    if here:
        print(f"{info.tag} ({size(info.size)}{part}) is here already: nothing was fetched ({seconds:.2f}s)")
        return
    rate = moved[1] / seconds / 1e6 if seconds > 0 else 0.0
    print(f"{verb} {info.tag} ({size(info.size)}{part}): {moved[0]} {size(moved[1])}, {kept[0]} {size(kept[1])}, "
          f"{seconds:.2f}s, {rate:.0f} MB/s")  # fmt: skip


def _push(args: argparse.Namespace) -> None:
    cache = cache_of(args)
    if args.format == "modelpack":
        _push_modelpack(args, cache)
        return
    info = cache.get(args.tag)
    with output.progress(info.size, "push") as progress:
        s = cache.push(args.tag, args.remote, progress=progress, sign=_signers(args))
    _report(args, s.info, ("uploaded", s.bytes_uploaded), ("already in the repository", s.bytes_present), s.seconds)
    if s.signed_as and not args.json:
        print(f"signed {s.info.tag} as {', '.join(s.signed_as)}")


def _push_modelpack(args: argparse.Namespace, cache: LocalCache) -> None:
    """``push --format modelpack``: a ModelPack artifact in a registry (signed by its cas tree's ref, not here)."""
    from ..foreign.ociartifact import push_modelpack
    from ..repo.repository import remote_url

    remote = remote_url(args.remote)
    if not remote.startswith(("oci://", "oci+http://", "oci+https://")):
        raise InvalidInput(f"--format modelpack pushes to a registry (oci://HOST/NAMESPACE), not {remote}")
    if args.sign:
        raise InvalidInput("--sign signs cas-format pushes; push with --format cas to sign, or sign the artifact "
                           "with the registry's own tooling")  # fmt: skip
    start = time.perf_counter()
    pushed = push_modelpack(cache, args.tag, remote)
    if args.json:
        print_json({**pushed.info.to_dict(), "reference": pushed.reference, "digest": pushed.digest,
                    "bytes_transferred": pushed.bytes_uploaded})  # fmt: skip
        return
    print(
        f"pushed {pushed.info.tag} ({size(pushed.info.size)}) as the ModelPack artifact {pushed.reference} "
        f"({pushed.digest[:19]}): uploaded {size(pushed.bytes_uploaded)}, {time.perf_counter() - start:.2f}s"
    )


def _signers(args: argparse.Namespace) -> list[Signer]:
    """The keys of --sign, and $CAS_SIGNING_KEY's only with --sign or when it is set (a push signs if either)."""
    if not args.sign and not os.environ.get("CAS_SIGNING_KEY", "").strip():
        return []
    from .trust import signers

    return list(signers(args.sign))


def _pull(args: argparse.Namespace) -> None:
    if args.dry_run:
        return _estimate(args)
    total = output.PROGRESS_MIN_BYTES if sys.stderr.isatty() else 0
    with output.progress(total, "pull", unknown_total=True) as progress:
        s = cache_of(args).pull(args.tag, args.remote, concurrency=args.concurrency, progress=progress,
                                include=args.include, exclude=args.exclude, seeds=args.seed or None)  # fmt: skip
    _report(args, s.info, ("fetched", s.bytes_fetched), ("reused from local files", s.bytes_reused), s.seconds,
            s.was_here, s.evicted)  # fmt: skip
    if s.evicted and not args.json:
        print(f"evicted {', '.join(s.evicted)} to keep the cache to its size budget")


def _estimate(args: argparse.Namespace) -> None:
    e = cache_of(args).estimate_pull(args.tag, args.remote, include=args.include, exclude=args.exclude)
    if args.json:
        print_json({**e.info.to_dict(), "bytes_to_fetch": e.bytes_to_fetch, "requests": e.requests,
                    "bytes_reused": e.bytes_reused, "bytes_present": e.bytes_present})  # fmt: skip
        return
    requests = f"{e.requests} range request{'' if e.requests == 1 else 's'}"
    print(f"pulling {e.info.tag} ({size(e.info.size)}) would fetch {size(e.bytes_to_fetch)} compressed, in {requests}; "
          f"of the rest, {size(e.bytes_reused)} would be copied from files already on this host and "
          f"{size(e.bytes_present)} is stored here already")  # fmt: skip


def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..server.app import serve
    from ..server.limits import PER_CLIENT

    token = os.environ.get("CAS_TOKEN") or None
    if args.token_file:
        token = Path(args.token_file).read_text().strip() or None
    if args.read_token and not token:
        raise InvalidInput("--read-token needs a token: --token-file FILE or CAS_TOKEN")
    per_client = PER_CLIENT if args.max_connections_per_client is None else args.max_connections_per_client
    if per_client < 1:
        raise InvalidInput("--max-connections-per-client must be 1 or more")
    serve(Path(args.dir), host=args.host, port=args.port, token=token, read_token=args.read_token,
          per_client=per_client)  # fmt: skip
