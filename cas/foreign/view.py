"""A foreign store's model folder as ``add`` reads it: a folder of links to files checked to lie inside the store.

A Hugging Face snapshot is a tree of symlinks into its repo's ``blobs/``; a
BentoML model is a folder of plain files.  Whoever can write either store
can point a link anywhere (the system's password file, a home directory
that never ends), and ``add`` follows links.  So the import walks the folder
itself first, never through a directory link, resolves every file, and
refuses in one line naming the entry anything that is not a regular file
inside the folders the store allows; ``add`` then reads a view made of
links to those resolved files only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InvalidInput


def build(folder: Path, allowed: list[Path], view: Path, what: str, leave_out: frozenset[str] = frozenset()
          ) -> list[tuple[str, Path]]:  # fmt: skip
    """Fill ``view`` with links to the files under ``folder`` but ``leave_out`` (paths in it), each resolved
    into one of ``allowed``; returns (path in the model, resolved file) pairs.  ``what`` names the folder in
    errors."""
    roots = [os.path.realpath(a) for a in allowed]
    files: list[tuple[str, Path]] = []
    for dirpath, dirs, names in os.walk(folder):
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                raise InvalidInput(f"{what}: {_rel(folder, dirpath, d)} is a link to a folder; refused (an import "
                                   "reads only files inside the store)")  # fmt: skip
        for n in names:
            rel = _rel(folder, dirpath, n)
            if rel in leave_out:
                continue
            real = os.path.realpath(os.path.join(dirpath, n))
            if not any(real.startswith(r + os.sep) for r in roots):
                raise InvalidInput(f"{what}: {rel} leads outside the store (to {real}); refused")
            try:
                regular = stat.S_ISREG(os.stat(real).st_mode)
            except FileNotFoundError:
                raise InvalidInput(f"{what}: {rel} is a link to nothing; refused") from None
            if not regular:
                raise InvalidInput(f"{what}: {rel} is not a regular file; refused")
            files.append((rel, Path(real)))
    for rel, target in files:
        link = view / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    return files


def _rel(folder: Path, dirpath: str, name: str) -> str:
    return os.path.relpath(os.path.join(dirpath, name), folder)
