"""Commands moving a model in from another store: import-hf (a Hugging Face cache), import-bento (a BentoML store)."""

from __future__ import annotations

import argparse
import time

from ..content.ref import ModelInfo
from .output import Command, cache_of, print_json, size


def commands(cmd: Command) -> None:
    sp = cmd("import-hf", _import_hf, "store a model from the local Hugging Face cache (no network)")
    sp.add_argument("source", metavar="REPO_ID|PATH", help="ORG/NAME as on the Hub, or a snapshot folder")
    sp.add_argument("tag", nargs="?", metavar="NAME[:VERSION]",
                    help="default: a name from the repo id, the version from the commit")  # fmt: skip
    sp.add_argument("--revision", metavar="REV", help="a commit or a ref such as main (default: main, else the newest)")
    sp.add_argument("--repo-type", choices=("model", "dataset", "space"), default="model")
    sp.add_argument("--hub-cache", metavar="DIR", help="the hub cache (default: $HF_HUB_CACHE, else $HF_HOME/hub)")
    sp.add_argument("--json", action="store_true")
    sp = cmd("import-oci", _import_oci, "store a model artifact of an OCI registry (ModelPack, KitOps, oras files)")
    sp.add_argument("reference", metavar="REF", help="[oci://]HOST[:PORT]/REPOSITORY[:TAG|@DIGEST], as docker names it")
    sp.add_argument("tag", nargs="?", metavar="NAME[:VERSION]",
                    help="default: the repository's last part, the artifact's tag as version")  # fmt: skip
    sp.add_argument("--json", action="store_true")
    sp = cmd("import-bento", _import_bento, "store a model from the BentoML store at $BENTOML_HOME")
    sp.add_argument("bento_tag", metavar="TAG", help="NAME:VERSION or NAME:latest, as 'bentoml models list' shows")
    sp.add_argument("tag", nargs="?", metavar="NAME[:VERSION]", help="default: BentoML's own name and version")
    sp.add_argument("--json", action="store_true")


def _import_hf(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    from ..foreign.hf import import_hf

    info = import_hf(cache_of(args), args.source, args.tag, revision=args.revision, repo_type=args.repo_type,
                     hub_cache=args.hub_cache)  # fmt: skip
    _report(info, args.json, time.perf_counter() - start)


def _import_oci(args: argparse.Namespace) -> None:
    from ..foreign.ociartifact import import_oci

    start = time.perf_counter()
    got = import_oci(cache_of(args), args.reference, args.tag)
    if args.json:
        print_json({**got.info.to_dict(), "bytes_transferred": got.bytes_fetched, "bytes_reused": got.bytes_reused})
        return
    _report(got.info, False, time.perf_counter() - start)
    print(f"fetched {size(got.bytes_fetched)}, reused from local files {size(got.bytes_reused)}")


def _import_bento(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    from ..foreign.bento import import_bento

    info = import_bento(cache_of(args), args.bento_tag, args.tag)
    _report(info, args.json, time.perf_counter() - start)


def _report(info: ModelInfo, as_json: bool, elapsed: float) -> None:
    """What ``cas add`` prints: the stored tag and its size."""
    if as_json:
        print_json(info.to_dict())
    else:
        print(f"{info.tag}  {size(info.size)} in {info.file_count} files  ({elapsed:.2f}s)")
