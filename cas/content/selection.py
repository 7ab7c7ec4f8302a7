"""Selections: which files of a model a pull, a snapshot or a checkout takes, by gitignore-style patterns.

``include`` patterns pick files (none: every file), ``exclude`` patterns drop
files from what they picked, each list read as git reads a ``.gitignore``:
``*.json`` matches at any depth, ``/config.json`` only at the top,
``original/`` everything under that folder, ``**`` any folders, and
``!pattern`` takes a file back (the last line matching a path decides).  An
include pattern that matches no file is an error, so a service never gets a
folder that silently lacks what it asked for; an exclude pattern may match
nothing.  The lines are compiled here, with ``re``: pathspec does the same
and costs a process 24 ms to import, which every partial snapshot paid.

A selection is named by its ``key`` (a hash of its patterns): a partial
snapshot lives at ``snapshots/<root>.<key>``.
"""

from __future__ import annotations

import re
from collections import namedtuple

from ..errors import InvalidInput, InvalidManifest

TYPE_CHECKING = False  # typing costs 2 ms to import: a service declaring a selection would pay it on start
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .tree import FileEntry, Tree

MAX_PATTERNS = 256
MAX_PATTERN_CHARS = 1024
MAX_RECORD_BYTES = 2 * MAX_PATTERNS * (MAX_PATTERN_CHARS * 6 + 3) + 16
KEY_HEX = 16  # 64 bits: distinct selections of one model never meet by chance


class Selection(namedtuple("Selection", ("include", "exclude"))):
    """Include and exclude patterns, each in the order given, without repeats."""

    __slots__ = ()
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    @classmethod
    def of(cls, include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None
           ) -> Selection | None:  # fmt: skip
        """The selection these patterns make (a string is one pattern); None when both are empty: every file."""
        inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
        return cls(inc, exc) if inc or exc else None

    @property
    def key(self) -> str:
        """A short name for this selection, the same wherever it is computed."""
        from .digest import chunk_id

        return chunk_id(self.encode()).hex()[:KEY_HEX]

    def encode(self) -> bytes:
        """Canonical JSON (``[include, exclude]``): cheap to make on a service's first access."""
        import json

        return json.dumps([list(self.include), list(self.exclude)], ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Selection:
        """A selection record written by ``encode``; anything else is an InvalidManifest."""
        import json

        try:
            doc = json.loads(data) if len(data) <= MAX_RECORD_BYTES else None
            sel = cls.of(doc[0], doc[1]) if isinstance(doc, list) and len(doc) == 2 else None
        except (ValueError, TypeError, InvalidInput) as e:
            raise InvalidManifest(f"selection record is malformed ({e})") from None
        if sel is None or sel.encode() != data:
            raise InvalidManifest("selection record is malformed or not in canonical form")
        return sel

    def files(self, tree: Tree, tag: str) -> list[FileEntry]:
        """The files of ``tree`` this selects, in tree order; an include pattern matching none is an error."""
        included = _Spec(self.include) if self.include else None
        excluded = _Spec(self.exclude) if self.exclude else None
        chosen = [f for f in tree.files if (included is None or included.match_file(f.path))
                  and not (excluded is not None and excluded.match_file(f.path))]  # fmt: skip
        for line, pattern in zip(included.lines if included else (), self.include):
            if not line.negated and not line.hit and not any(line.regex.match(f.path) for f in tree.files):
                raise InvalidInput(f"--include {pattern!r} matches no file of {tag} (it has {_sample(tree)}); "
                                   "check the pattern: it is read as a .gitignore line")  # fmt: skip
        return chosen

    def describe(self) -> str:
        """The options that make this selection, as a user would type them."""
        inc = " ".join(_quote(p) for p in self.include)
        exc = " ".join(_quote(p) for p in self.exclude)
        return " ".join(x for x in (f"--include {inc}" if inc else "", f"--exclude {exc}" if exc else "") if x)


def _patterns(given: Iterable[str] | str | None, what: str) -> tuple[str, ...]:
    if given is None:
        return ()
    items = [given] if isinstance(given, str) else list(given)
    if len(items) > MAX_PATTERNS:
        raise InvalidInput(f"{len(items)} {what} patterns: at most {MAX_PATTERNS}")
    for p in items:
        if not isinstance(p, str) or not p.strip() or len(p) > MAX_PATTERN_CHARS:
            raise InvalidInput(f"{what} pattern {str(p)[:80]!r}: give a non-empty gitignore-style pattern of at "
                               f"most {MAX_PATTERN_CHARS} characters")  # fmt: skip
        if any(ord(c) < 32 or c == "\x7f" for c in p):
            raise InvalidInput(f"{what} pattern {p[:80]!r} holds a control character")
    return tuple(dict.fromkeys(p.strip() for p in items))  # in order (a "!" line undoes those before it)


class _Line:
    """One compiled gitignore line, and whether it has matched a path yet."""

    __slots__ = ("hit", "negated", "regex")

    def __init__(self, pattern: str):
        self.negated, self.regex = _compile(pattern)
        self.hit = False


class _Spec:
    """Compiled gitignore lines: a path is matched by the last line that matches it (a ``!`` line unmatches)."""

    def __init__(self, patterns: Iterable[str]):
        self.lines = [_Line(p) for p in patterns]

    def match_file(self, path: str) -> bool:
        matched = False
        for line in self.lines:
            if matched == line.negated and line.regex.match(path):
                matched = not line.negated
                line.hit = True
        return matched


def _compile(pattern: str) -> tuple[bool, re.Pattern[str]]:
    """One gitignore line as (negated, regex over a file's path): without a slash before its end it matches at
    any depth; a trailing ``/`` matches a folder, which takes every file beneath it."""
    negated = pattern.startswith("!")
    body = pattern[1:] if negated else pattern
    if body.startswith(("\\!", "\\#")):
        body = body[1:]
    folder = body.endswith("/")
    body = body.rstrip("/")
    if not body:
        raise InvalidInput(f"pattern {pattern!r} names nothing: give a glob such as '*.json' or 'onnx/'")
    anchored = "/" in body
    regex = ("" if anchored else "(?:.*/)?") + _glob(body.lstrip("/"))
    return negated, re.compile(regex + ("/.*" if folder else "(?:/.*)?") + r"\Z", re.DOTALL)


def _glob(glob: str) -> str:
    """A glob as a regex: ``*`` and ``?`` stop at ``/``, ``**`` spans folders, ``[...]`` is a class."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            before = i == 0 or glob[i - 1] == "/"
            after = glob[i + 2 : i + 3]
            if before and after == "/":
                out.append("(?:.*/)?")
                i += 3
                continue
            if before and not after:
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := glob.find("]", i + 2)) != -1:
            inner = glob[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + inner[1:] if inner[0] in "!^" else inner) + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _sample(tree: Tree) -> str:
    names = [f.path for f in tree.files[:5]]
    more = f", ... {len(tree.files)} files" if len(tree.files) > 5 else ""
    return ", ".join(names) + more


def _quote(p: str) -> str:
    return f"'{p}'" if any(c in p for c in " *?[]!'\"$") else p
