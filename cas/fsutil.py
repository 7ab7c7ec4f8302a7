"""Filesystem primitives that make every write atomic.

Everything is written under a unique temporary name and moved into place,
so a crash leaves at worst an orphaned temporary, never a half-written
object under its real name.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import threading
import warnings
from pathlib import Path

_counter = 0
_TEMP = re.compile(r"(\d+)-[0-9a-f]+-\d+-[0-9a-f]{6}$")
_counter_lock = threading.Lock()


def temp_name(prefix: str = "") -> str:
    """A name unique across threads and processes; the pid lets cleanup tell live from dead."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    return f"{prefix}{os.getpid()}-{threading.get_ident() & 0xFFFFFF:x}-{n}-{os.urandom(3).hex()}"


def pid_of_temp(name: str) -> int | None:
    """The pid embedded in a temp_name, or None for other names."""
    m = _TEMP.search(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, tmp_dir: Path, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / temp_name("w")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes, tmp_dir: Path) -> bool:
    """Write an immutable object (fsynced) unless it exists; see ``publish``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / temp_name("obj-")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        return publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> bool:
    """Move a finished immutable object into place unless it already exists.

    Returns False when another writer got there first; the temporary is then
    removed.  Content-addressed objects are never rewritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink()
        return False
    tmp.unlink()
    return True


_exdev_warned = False


def link_or_copy(src: Path, dst: Path) -> None:
    """Hardlink ``src`` at ``dst``; across filesystems, copy and warn once."""
    global _exdev_warned
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        if not _exdev_warned:
            _exdev_warned = True
            warnings.warn(
                f"cas: {dst.parent} is on another filesystem than the blobs in {src.parent.parent.parent}; "
                "snapshot files are copied, not hardlinked, and take extra disk space",
                RuntimeWarning,
                stacklevel=3,
            )
        shutil.copyfile(src, dst)
        os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode))


def make_writable_tree(path: Path) -> None:
    """Give the owner write permission on every directory below ``path`` so it can be removed."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
            try:
                os.chmod(d, 0o755)
            except FileNotFoundError:
                pass


def remove_tree(path: Path) -> None:
    """Remove a directory tree, including read-only snapshot directories."""
    if not os.path.lexists(path):
        return
    make_writable_tree(path)
    shutil.rmtree(path, ignore_errors=False)
