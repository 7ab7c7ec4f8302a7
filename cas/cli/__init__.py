"""The ``cas`` command line: the parser and error handling; each group of commands has a module of its own.

Errors are one line on stderr and exit code 1 (usage errors: 2); ``--debug``
shows the traceback.  Every listing takes ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from ..errors import OUT_OF_SPACE, CasError, out_of_space_advice
from . import archive, checkout, foreign, models, remote, space, sync, trust
from .output import Command, EscapedStream, printable


def main(argv: Sequence[str] | None = None) -> int:
    _tune_process()
    warnings.showwarning = _warning_line
    if not isinstance(sys.stdout, EscapedStream):
        sys.stdout = EscapedStream(sys.stdout)
    parser = build_parser(_command_in(sys.argv[1:] if argv is None else argv))
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
        print(f"cas: error: {_one_line(e, args.home)}", file=sys.stderr)
        return 1


def _tune_process() -> None:
    """What only a process of its own may set (a library must not: a service shares its process).

    numpy (byte planes) starts a BLAS thread per core that spins for nothing here (2.4% of a pull's
    CPU); the cyclic GC ran over the pull's plan again and again (3.5%): a pull's objects are few and
    acyclic, so collections run 10x less often.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 7000), gen1, gen2)


def _warning_line(message: Warning | str, *_: object, **__: object) -> None:
    """A warning (a refresh that fell back, a cache over its budget) as one line, like an error."""
    print(f"cas: warning: {printable(str(message).removeprefix('cas: '))}", file=sys.stderr)


def _one_line(e: BaseException, home: str | None) -> str:
    if isinstance(e, OSError) and not isinstance(e, CasError):
        where = f" ({e.filename})" if e.filename else ""
        return printable(f"{e.strerror or e}{where}{_what_to_do(e, home)}")
    return printable(" ".join(str(e).split()))


def _what_to_do(e: OSError, home: str | None) -> str:
    """What to do about a full disk or a size limit; the cache stays consistent, so running again is safe."""
    if e.errno in OUT_OF_SPACE:
        from ..local.cache import default_root

        return f": {out_of_space_advice(e, home or default_root())}"
    return ""


def _command_in(argv: Sequence[str]) -> str | None:
    """The command an argument list names (the first word that is not a global flag or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--home":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


class _Unused:
    """The parser of a command this run does not need: building all 30 took a third of a warm ``cas`` run."""

    def __getattr__(self, name: str) -> Callable[..., _Unused]:
        return lambda *args, **kwargs: _Unused()  # add_argument, add_subparsers, add_parser, ...


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command``, only that command's own arguments are built (when it
    is not a command, all are, for the error and the help that lists them)."""
    p = argparse.ArgumentParser(prog="cas", description="Content-addressed cache for ML models.")
    p.add_argument("--version", action=_Version, nargs=0, help="print the version of cas and exit")
    _global_flags(p, default=None)
    # The same flags after the command; SUPPRESS keeps them from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(metavar="COMMAND")

    names: list[str] = []
    for group in COMMANDS:
        group(lambda name, func, help: names.append(name) or _Unused())  # type: ignore[arg-type,func-returns-value,return-value]
    only = command if command in names else None

    def cmd(name: str, func: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Unused()  # type: ignore[return-value]
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=func)
        return sp

    for group in COMMANDS:
        group(cmd)
    return p


COMMANDS: list[Callable[[Command], None]] = [
    models.commands,
    sync.commands,
    checkout.commands,
    space.commands,
    foreign.commands,
    archive.commands,
    remote.commands,
    trust.commands,
]


class _Version(argparse.Action):
    """``cas --version``: read from the installed package's metadata only when asked (importlib.metadata costs
    milliseconds every command would pay)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"cas {version('cas')}")
        except PackageNotFoundError:
            print("cas (not installed: no package metadata; pip install -e . gives it one)")
        parser.exit()


def _global_flags(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--home", metavar="DIR", default=default,
                   help="cache root (default: $CAS_HOME, else $XDG_CACHE_HOME/cas, else ~/.cache/cas)")  # fmt: skip
    p.add_argument("--debug", action="store_true", default=default or False, help="show tracebacks")
