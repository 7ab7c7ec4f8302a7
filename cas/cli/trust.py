"""Signing and trust: keygen, setting up a repository's roots of trust, delegating names, signing tags.

Private keys come from ``--sign FILE`` (repeatable) and ``$CAS_SIGNING_KEY``;
a host's policy from ``$CAS_TRUST`` (see ``cas.trust.policy``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..content.tags import Tag, parse
from ..errors import InvalidInput
from ..trust import modelsigning
from ..trust.keys import SigningKey, from_environment, generate, keyid, load_public
from ..trust.policy import Anchor, TrustPolicy
from .output import Command, cache_of, print_json, remote_option

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..repo.repository import Repository
    from ..trust.documents import Role, Root, State

SIGN_HELP = "a private key that signs (repeatable; also $CAS_SIGNING_KEY)"


def commands(cmd: Command) -> None:
    sp = cmd("keygen", _keygen, "make an Ed25519 signing key: KEY (private, 0600) and KEY.pub")
    sp.add_argument("path", metavar="KEY")
    sp = cmd("sign", _sign, "sign versions already in a repository (a role whose keys are given signs them)")
    sp.add_argument("tags", nargs="+", metavar="TAG")
    remote_option(sp)
    sp.add_argument("--sign", action="append", default=[], metavar="KEY", help=SIGN_HELP)
    sp.add_argument("--no-latest", action="store_true", help="do not make them their names' latest")

    def usage(_: argparse.Namespace) -> int:
        trust.print_help(sys.stderr)
        return 2

    trust = sp = cmd("trust", usage, "set up and change who may sign what in a repository")
    sub = sp.add_subparsers(metavar="ACTION")

    def action(name: str, func: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("url", metavar="URL", help="the repository")
        return p

    _trust_commands(action)
    _model_signing_commands(cmd)


def _trust_commands(cmd: Command) -> None:
    sp = cmd("init", _init, "set up signing in a repository and write the policy hosts will trust it by")
    sp.add_argument("--root", action="append", required=True, metavar="KEY", help="a root key (private; offline)")
    sp.add_argument("--root-threshold", type=int, default=1, metavar="N")
    sp.add_argument("--online", action="append", required=True, metavar="KEY",
                    help="the key that signs the state at each publish (private)")  # fmt: skip
    sp.add_argument("--policy", required=True, metavar="FILE", help="where to write the hosts' policy (JSON)")
    sp.add_argument("--name", default="", help="the anchor's name in the policy (default: the URL)")
    sp = cmd("delegate", _delegate, "let a role's keys sign the names given (again: replaces its keys)")
    sp.add_argument("role")
    sp.add_argument("--names", action="append", required=True, metavar="PATTERN",
                    help="names (or name:version patterns) it may sign: 'classifier*'")  # fmt: skip
    sp.add_argument("--key", action="append", required=True, metavar="KEY", help="its keys (.pub or private)")
    sp.add_argument("--threshold", type=int, default=1, metavar="N", help="signatures needed (1)")
    sp.add_argument("--sign", action="append", default=[], metavar="KEY", help=SIGN_HELP + ": root and online")
    sp = cmd("revoke", _revoke, "remove a role: hosts stop trusting its keys at their next pull")
    sp.add_argument("role")
    sp.add_argument("--sign", action="append", default=[], metavar="KEY", help=SIGN_HELP + ": root and online")
    sp = cmd("rotate", _rotate, "replace the root or online keys (signed by the old root keys and the new)")
    sp.add_argument("--root", action="append", default=[], metavar="KEY", help="a new root key")
    sp.add_argument("--root-threshold", type=int, metavar="N")
    sp.add_argument("--online", action="append", default=[], metavar="KEY", help="a new online key")
    sp.add_argument("--sign", action="append", default=[], metavar="KEY", help=SIGN_HELP)
    sp = cmd("refresh", _refresh, "sign the state again with a later expiry (run it more often than --days)")
    sp.add_argument("--days", type=float, metavar="DAYS", help="validity (default: a publish's, a week)")
    sp.add_argument("--sign", action="append", default=[], metavar="KEY", help=SIGN_HELP + ": online")
    sp = cmd("show", _show, "who may sign what, and what is signed")
    sp.add_argument("--json", action="store_true")


def _model_signing_commands(cmd: Command) -> None:
    methods = "key (an EC private key, PEM), certificate (--key, --certificate, --chain) or sigstore (keyless: " \
              "$SIGSTORE_IDENTITY_TOKEN, CI credentials or a browser; needs Sigstore's servers)"  # fmt: skip
    sp = cmd("model-sign", _model_sign, "write an OpenSSF model-signing signature of a stored model (model_signing "
             "verifies it on any copy of its files, without cas)")  # fmt: skip
    sp.add_argument("tag", metavar="TAG")
    sp.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write it (a sigstore bundle)")
    sp.add_argument("--method", choices=modelsigning.METHODS, default="key", help=methods)
    sp.add_argument("--key", metavar="PEM", help="the elliptic-curve private key that signs (key, certificate)")
    sp.add_argument("--certificate", metavar="PEM", help="the key's signing certificate (certificate)")
    sp.add_argument("--chain", action="append", default=[], metavar="PEM", help="its chain up to a root (repeatable)")
    sp = cmd("model-verify", _model_verify, "check a stored model against an OpenSSF model-signing signature")
    sp.add_argument("tag", metavar="TAG")
    sp.add_argument("--signature", required=True, metavar="FILE", help="the signature (a sigstore bundle)")
    sp.add_argument("--method", choices=modelsigning.METHODS, default="key", help="how it was signed (key)")
    sp.add_argument("--key", metavar="PEM", help="the signer's elliptic-curve public key (key)")
    sp.add_argument("--chain", action="append", default=[], metavar="PEM",
                    help="certificates up to a trusted root (certificate; default: the system's)")  # fmt: skip
    sp.add_argument("--identity", help="the signer's identity: an email, a CI workflow URL (sigstore)")
    sp.add_argument("--issuer", metavar="URL", help="the identity's OIDC issuer (sigstore)")


def signers(paths: list[str]) -> list[SigningKey]:
    keys = [SigningKey.from_file(p) for p in paths] + from_environment()
    if not keys:
        raise InvalidInput("no signing key: pass --sign KEY (made by 'cas keygen') or set $CAS_SIGNING_KEY")
    return keys


def _keygen(args: argparse.Namespace) -> None:
    key = generate(args.path)
    print(f"wrote {args.path} (private, keep it secret) and {args.path}.pub; key id {key.keyid}")


def _init(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish  # not at the top: every cas command would pay its import (18 ms)

    url = remote_url(args.url)
    root_keys = [SigningKey.from_file(p) for p in args.root]
    online_keys = [SigningKey.from_file(p) for p in args.online]
    data = run_with_repository(lambda repo: publish.init(
        repo, root_keys, [k.public for k in online_keys], root_threshold=args.root_threshold,
        online_signers=online_keys), url, creating=True)  # fmt: skip
    policy = TrustPolicy((Anchor(args.name or url, data, ("*",)),))
    Path(args.policy).write_text(policy.to_json())
    print(f"{url} signs with root version 1; hosts trust it with CAS_TRUST={args.policy}; "
          "next: 'cas trust delegate' names to the teams that publish them")  # fmt: skip


def _delegate(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    keys = [load_public(p) for p in args.key]
    root = run_with_repository(lambda repo: publish.set_role(repo, args.role, args.names, keys, args.threshold,
                                                             signers(args.sign)), remote_url(args.url))  # fmt: skip
    ids = ", ".join(keyid(k)[:16] for k in keys)
    print(
        f"role {args.role} signs {', '.join(args.names)} with {args.threshold} of {ids} (root version {root.version})"
    )


def _revoke(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    root = run_with_repository(lambda repo: publish.remove_role(repo, args.role, signers(args.sign)),
                               remote_url(args.url))  # fmt: skip
    print(f"role {args.role} removed (root version {root.version}): hosts stop trusting it at their next pull")


def _rotate(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    if not args.root and not args.online:
        raise InvalidInput("give the new keys: --root KEY and/or --online KEY")
    root = run_with_repository(lambda repo: publish.set_keys(
        repo, signers(args.sign), root_keys=[load_public(p) for p in args.root], root_threshold=args.root_threshold,
        online=[load_public(p) for p in args.online]), remote_url(args.url))  # fmt: skip
    print(f"root version {root.version}: root keys {len(root.root.keys)}, online keys {len(root.state.keys)}")


def _refresh(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    state = run_with_repository(lambda repo: publish.refresh(repo, signers(args.sign), args.days),
                                remote_url(args.url))  # fmt: skip
    print(f"state version {state.version}, valid until {_when(state.expires)}")


def _sign(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    wanted = [parse(t) for t in args.tags]
    keys = signers(args.sign)

    async def work(repo: Repository) -> list[str]:
        refs = [await repo.ref(t) for t in wanted]
        return await publish.sign(repo, [(Tag(i.name, i.version), i.root) for i in refs], keys,
                                  latest=not args.no_latest)  # fmt: skip

    roles = run_with_repository(work, remote_url(args.remote))
    print(f"signed {', '.join(map(str, wanted))} as {', '.join(roles)}")


def _show(args: argparse.Namespace) -> None:
    from ..repo.repository import remote_url, run_with_repository
    from ..trust import publish

    async def work(repo: Repository) -> tuple[Root, State, dict[str, Role]]:
        root, state = await publish.current(repo)
        return root, state, {n: await publish.role(repo, state, n) for n in state.roles}

    root, state, roles = run_with_repository(work, remote_url(args.url))
    doc = {"root": {"version": root.version, "expires": _when(root.expires), "keys": list(root.root.keys),
                    "threshold": root.root.threshold},
           "online": {"keys": list(root.state.keys), "threshold": root.state.threshold},
           "state": {"version": state.version, "expires": _when(state.expires)},
           "roles": {n: {"names": list(g.names), "keys": list(g.keys), "threshold": g.threshold,
                         "signed": sorted(roles[n].targets) if n in roles else []}
                     for n, g in root.roles.items()}}  # fmt: skip
    if args.json:
        print_json(doc)
        return
    print(f"root version {root.version} (expires {_when(root.expires)}), state version {state.version} "
          f"(expires {_when(state.expires)})")  # fmt: skip
    for name, r in doc["roles"].items():
        print(f"  {name}: {', '.join(r['names'])}; {r['threshold']} of {', '.join(k[:16] for k in r['keys'])}; "
              f"{len(r['signed'])} tags signed")  # fmt: skip


def _model_sign(args: argparse.Namespace) -> None:
    out = modelsigning.sign(cache_of(args), args.tag, args.output, method=args.method, key=args.key,
                            certificate=args.certificate, chain=args.chain,
                            identity_token=os.environ.get("SIGSTORE_IDENTITY_TOKEN"))  # fmt: skip
    print(f"signed {args.tag} ({args.method}): {out}; model_signing verifies it on 'cas materialize {args.tag}' "
          "or any copy of its files")  # fmt: skip


def _model_verify(args: argparse.Namespace) -> None:
    path = modelsigning.verify(cache_of(args), args.tag, args.signature, method=args.method, key=args.key,
                               chain=args.chain, identity=args.identity, issuer=args.issuer)  # fmt: skip
    print(f"{args.tag} verifies against {args.signature}: every file of {path} is what was signed")


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
