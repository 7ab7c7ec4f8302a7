"""Selections: which files of a model a pull, a snapshot or a checkout takes, by gitignore-style patterns.

``include`` patterns pick files (none: every file), ``exclude`` patterns drop
files from what they picked, each list read as git reads a ``.gitignore`` (pathspec's
``GitIgnoreSpec``): ``*.json`` matches at any depth, ``/config.json`` only at
the top, ``original/`` everything under that folder, ``**`` any folders,
``!pattern`` takes a file back.  An include pattern that matches no file is
an error, so a service never gets a folder that silently lacks what it asked
for; an exclude pattern may match nothing.

A selection is named by its ``key`` (a hash of its patterns): a partial
snapshot lives at ``snapshots/<root>.<key>``.
"""

from __future__ import annotations

from collections import namedtuple

from .errors import InvalidInput, InvalidManifest

TYPE_CHECKING = False  # typing costs 2 ms to import: a service declaring a selection would pay it on start
if TYPE_CHECKING:
    from collections.abc import Iterable

    from pathspec import GitIgnoreSpec

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
        included = _spec(self.include) if self.include else None
        excluded = _spec(self.exclude) if self.exclude else None
        for pattern in (p for p in self.include if not p.startswith("!")):
            one = _spec((pattern,))
            if not any(one.match_file(f.path) for f in tree.files):
                raise InvalidInput(f"--include {pattern!r} matches no file of {tag} (it has {_sample(tree)}); "
                                   "check the pattern: it is read as a .gitignore line")  # fmt: skip
        return [f for f in tree.files if (included is None or included.match_file(f.path))
                and not (excluded is not None and excluded.match_file(f.path))]  # fmt: skip

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


def _spec(patterns: Iterable[str]) -> GitIgnoreSpec:
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except ValueError as e:  # GitIgnorePatternError: "!" alone, a trailing backslash
        raise InvalidInput(f"pattern in {list(patterns)!r:.200} cannot be read as a gitignore line: {e}") from None


def _sample(tree: Tree) -> str:
    names = [f.path for f in tree.files[:5]]
    more = f", ... {len(tree.files)} files" if len(tree.files) > 5 else ""
    return ", ".join(names) + more


def _quote(p: str) -> str:
    return f"'{p}'" if any(c in p for c in " *?[]!'\"$") else p
