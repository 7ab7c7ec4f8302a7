"""Checkouts: a version (or a selection of it) laid into a directory of the user's, and its status.

    DIR/<the model's files>
    DIR/.cas/checkout.json    what cas wrote there: tag, root, selection, and per file its id and stat

Files are copies (reflinks where the filesystem can: a clone costs no space
and no time) that the user may edit, or with ``link`` hardlinks to the
cache's blobs, read-only.  A checkout over an earlier one writes only the
files whose content changes and removes those the new version lacks; a file
the user changed, or one of theirs in the way, is never overwritten or
removed unless forced: the whole checkout is planned first and refused in
one error before anything is touched.  A file counts as unchanged when its
stat is what cas recorded (as git's index does), else when it hashes to the
recorded id.  Nothing is written through a symbolic link: each file goes to
a temporary in ``.cas/`` and is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import NamedTuple

from ..content.digest import hash_file
from ..content.ref import ModelInfo
from ..content.selection import Selection
from ..content.tree import FileEntry, check_path
from ..errors import CasError, InvalidInput, NotFound
from ..system.dirs import make_dirs
from ..system.files import atomic_write, copy_range, link_or_copy
from ..system.names import temp_name
from .objects import ObjectStore

STATE_DIR = ".cas"
RECORD = "checkout.json"
FORMAT = 1
MAX_RECORD_BYTES = 64 << 20
FICLONE = 0x40049409  # linux/fs.h: clone a whole file (btrfs, XFS, bcachefs)


class Conflict(InvalidInput):
    """Files of the user's that a checkout would overwrite or remove."""


class CheckoutReport(NamedTuple):
    info: ModelInfo
    path: Path
    written: list[str]
    removed: list[str]
    kept: int  # files already right
    bytes_written: int
    mode: str  # "copy" or "link"

    def to_dict(self) -> dict[str, object]:
        return {"tag": self.info.tag, "root": self.info.root, "path": str(self.path), "written": self.written,
                "removed": self.removed, "kept": self.kept, "bytes_written": self.bytes_written,
                "mode": self.mode}  # fmt: skip


class CheckoutStatus(NamedTuple):
    tag: str
    path: Path
    modified: list[str]  # not the version's bytes
    missing: list[str]  # in the version, not in the directory
    untracked: list[str]  # in the directory, not in the version

    @property
    def clean(self) -> bool:
        return not (self.modified or self.missing or self.untracked)

    def to_dict(self) -> dict[str, object]:
        return {"tag": self.tag, "path": str(self.path), "clean": self.clean, "modified": self.modified,
                "missing": self.missing, "untracked": self.untracked}  # fmt: skip


class Record(NamedTuple):
    """What a checkout wrote: its version, selection and each file's (id, size, mtime_ns, inode)."""

    tag: str
    root: str
    selection: Selection | None
    files: dict[str, tuple[str, int, int, int]]


def read_record(dest: Path) -> Record | None:
    """The record of the last checkout into ``dest``, or None (none, or not one cas can read)."""
    try:
        with open(dest / STATE_DIR / RECORD, "rb") as f:
            doc = json.loads(f.read(MAX_RECORD_BYTES + 1)[:MAX_RECORD_BYTES])
        sel = Selection.of(doc["include"], doc["exclude"])
        files = {check_path(p): (str(v[0]), int(v[1]), int(v[2]), int(v[3])) for p, v in doc["files"].items()}
        if doc["format"] != FORMAT:
            return None
        return Record(str(doc["tag"]), str(doc["root"]), sel, files)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, CasError):
        return None


def _write_record(dest: Path, rec: Record) -> None:
    sel = rec.selection or Selection((), ())
    doc = {"format": FORMAT, "tag": rec.tag, "root": rec.root, "include": list(sel.include),
           "exclude": list(sel.exclude), "files": {p: list(v) for p, v in sorted(rec.files.items())}}  # fmt: skip
    state = dest / STATE_DIR
    atomic_write(state / RECORD, json.dumps(doc, separators=(",", ":")).encode(), state, durable=False)


class _Plan(NamedTuple):
    write: list[FileEntry]
    remove: list[str]
    keep: dict[str, FileEntry]
    conflicts: list[str]


class Checkout:
    """One checkout of ``files`` of ``info`` into ``dest``, from the blobs of ``objects``."""

    def __init__(self, objects: ObjectStore, info: ModelInfo, files: list[FileEntry], sel: Selection | None,
                 dest: Path, *, link: bool):  # fmt: skip
        self.objects, self.info, self.files, self.sel, self.link = objects, info, files, sel, link
        self.dest = dest
        self.record = read_record(dest)
        self.recorded = self.record.files if self.record else {}

    def run(self, force: bool) -> CheckoutReport:
        plan = self._plan()
        if plan.conflicts and not force:
            shown = ", ".join(repr(p) for p in plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
            raise Conflict(f"checkout of {self.info.tag} into {self.dest} would overwrite or remove "
                           f"{len(plan.conflicts)} file(s) changed since cas wrote them, or not cas's ({shown}); "
                           "nothing was changed: move them away, or run again with --force")  # fmt: skip
        state = self.dest / STATE_DIR
        make_dirs(state)
        files = {p: _stamp(self.dest / p, f) for p, f in plan.keep.items()}
        written = 0
        for f in plan.write:
            self._place(f, state)
            files[f.path] = _stamp(self.dest / f.path, f)
            written += f.size
        for p in plan.remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dest / p)
            _prune_dirs(self.dest, p)
        _write_record(self.dest, Record(self.info.tag, self.info.root, self.sel, files))
        return CheckoutReport(self.info, self.dest, [f.path for f in plan.write], plan.remove, len(plan.keep), written,
                              "link" if self.link else "copy")  # fmt: skip

    def _plan(self) -> _Plan:
        write: list[FileEntry] = []
        keep: dict[str, FileEntry] = {}
        conflicts: list[str] = []
        for f in self.files:
            state = self._state(f.path, f.file_id.hex())
            if state == "same" and self._linked(f) == self.link:
                keep[f.path] = f
            elif state in ("absent", "ours", "same"):  # "same" as a link where a copy is asked, or the reverse
                write.append(f)
            else:
                conflicts.append(f.path)
                write.append(f)
        wanted = {f.path for f in self.files}
        remove = []
        for p in self.recorded:
            if p in wanted:
                continue
            state = self._state(p, None)
            if state == "ours":
                remove.append(p)
            elif state != "absent":
                conflicts.append(p)
                remove.append(p)
        return _Plan(write, remove, keep, conflicts)

    def _state(self, path: str, target: str | None) -> str:
        """What is at ``path``: "absent"; "same" (already ``target``'s bytes); "ours" (what cas wrote, unchanged);
        "theirs" (changed, not cas's, or reached through a link)."""
        full = self.dest / path
        if not _inside(self.dest, path):
            return "theirs"
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return "absent"
        except NotADirectoryError:
            return "theirs"
        if not stat.S_ISREG(st.st_mode):
            return "theirs"
        rec = self.recorded.get(path)
        if rec is not None and (st.st_size, st.st_mtime_ns, st.st_ino) == rec[1:]:
            current: str | None = rec[0]  # as cas wrote it (git's index trusts a stat the same way)
        elif target is not None or rec is not None:
            current = hash_file(str(full)).hex()
        else:
            current = None
        if target is not None and current == target:
            return "same"
        return "ours" if rec is not None and current == rec[0] else "theirs"

    def _linked(self, f: FileEntry) -> bool:
        """Whether the file at ``f``'s place is its blob (a hardlink: editing it would edit the cache)."""
        try:
            return os.path.samestat(os.lstat(self.dest / f.path), os.stat(self.objects.blob_of(f)))
        except FileNotFoundError:
            return False

    def _place(self, f: FileEntry, state: Path) -> None:
        """Write one file at its place: a temporary in ``.cas/`` renamed over whatever is there."""
        blob = self.objects.blob_of(f)
        tmp = state / temp_name("file-")
        try:
            if self.link:
                link_or_copy(blob, tmp)  # a read-only hardlink; a copy across filesystems
            else:
                _clone(blob, tmp, 0o755 if f.executable else 0o644)
            target = self.dest / f.path
            if target.parent != self.dest:
                _make_parents(self.dest, f.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # first: renamed over a file, ext4 flushes the new one there and then (185 ms
            os.rename(tmp, target)  # for 268 MB), which a copy that may be lost in a crash need not wait for
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def status(dest: Path, rec: Record, files: list[FileEntry], tag: str) -> CheckoutStatus:
    """How ``dest`` differs from ``files`` (a version or its selection): changed, missing, and extra files."""
    modified, missing = [], []
    for f in files:
        full = dest / f.path
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(f.path)
            continue
        known = rec.files.get(f.path)
        if known is not None and known[0] == f.file_id.hex() and (st.st_size, st.st_mtime_ns, st.st_ino) == known[1:]:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != f.size or hash_file(str(full)) != f.file_id:
            modified.append(f.path)
    wanted = {f.path for f in files}
    untracked = sorted(p for p in _files_in(dest) if p not in wanted)
    return CheckoutStatus(tag, dest, modified, missing, untracked)


def compare(objects: ObjectStore, dest: str | os.PathLike[str], info: ModelInfo | None,
            sel: Selection | None) -> CheckoutStatus:  # fmt: skip
    """How ``dest`` differs from ``info`` (None: the version last checked out there), through ``sel`` (None:
    the checkout's own selection)."""
    target = Path(os.path.abspath(os.fspath(dest)))
    rec = read_record(target)
    if info is not None:
        name, root = info.tag, info.root
    elif rec is not None:
        name, root = rec.tag, rec.root
    else:
        raise InvalidInput(f"{target} holds no cas checkout (no .cas/checkout.json): name the version to "
                           "compare it with (cas status DIR --tag TAG)")  # fmt: skip
    sel = sel if sel is not None else (rec.selection if rec else None)
    try:
        tree = objects.load_tree(root)
    except NotFound:
        raise NotFound(f"{name} (tree {root[:12]}) is not in the cache at {objects.root}; pull it to compare "
                       f"{target} with it") from None  # fmt: skip
    files = sel.files(tree, name) if sel is not None else list(tree.files)
    return status(target, rec or Record(name, root, sel, {}), files, name)


def destination(dest: str | os.PathLike[str], cache_root: Path) -> Path:
    """``dest`` made if need be; never inside the cache, never a file."""
    target = Path(os.path.abspath(os.fspath(dest)))
    real, cache = os.path.realpath(target), os.path.realpath(cache_root)
    if real == cache or real.startswith(cache + os.sep):
        raise InvalidInput(f"{target} is inside the cache at {cache_root}; check out into a folder of your own")
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is a file; give a folder to check out into")
    make_dirs(target)
    return target


def _files_in(dest: Path) -> list[str]:
    out = []
    for here, folders, names in os.walk(dest):
        if here == str(dest):
            folders[:] = [d for d in folders if d != STATE_DIR]
        out += [os.path.relpath(os.path.join(here, n), dest).replace(os.sep, "/") for n in names]
    return out


def _inside(dest: Path, path: str) -> bool:
    """Whether every folder on the way to ``path`` is a real folder inside ``dest`` (no link to elsewhere)."""
    parts = path.split("/")[:-1]
    here = dest
    for part in parts:
        here = here / part
        try:
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                return False
        except FileNotFoundError:
            return True
    return True


def _make_parents(dest: Path, path: str) -> None:
    here = dest
    for part in path.split("/")[:-1]:
        here = here / part
        try:
            os.mkdir(here)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                raise InvalidInput(f"{here} is in the way of {path} (not a folder); move it away") from None


def _prune_dirs(dest: Path, path: str) -> None:
    """Remove the folders of a removed file that are left empty, up to ``dest``."""
    here = (dest / path).parent
    while here != dest:
        try:
            os.rmdir(here)
        except OSError:
            return
        here = here.parent


def _stamp(path: Path, f: FileEntry) -> tuple[str, int, int, int]:
    st = os.lstat(path)
    return (f.file_id.hex(), st.st_size, st.st_mtime_ns, st.st_ino)


def _clone(src: Path, dst: Path, mode: int) -> None:
    """A writable copy: a reflink where the filesystem clones files, else the kernel's copy."""
    import fcntl

    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                fcntl.ioctl(fd, FICLONE, s.fileno())
            except OSError:
                copy_range(s.fileno(), fd, os.fstat(s.fileno()).st_size, 0, 0)
        finally:
            os.close(fd)
    os.chmod(dst, mode)
