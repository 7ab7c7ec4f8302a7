"""Filesystem primitives that make every write atomic, and keep a cache shared by a group shared.

Everything is written under a unique temporary name and moved into place,
so a crash leaves at worst an orphaned temporary, never a half-written
object under its real name.

A power loss is a crash that can also undo what the disk was not told to
keep.  So ``publish``, ``move_into_place`` and their callers make a name
durable before anything that refers to it is written (blobs before their
tree, packs before the locator, everything before the ref): the file is
fsynced, then linked or renamed, then its folder fsynced; and a folder made
on the way (``trees/44/``, ``refs/NAME/``) is fsynced in its parent first
(``make_durable_dirs``).  ext4 and XFS happen to commit these in order;
btrfs and others need the flushes.  ``tests/reliability/test_durability.py``
checks the order in a system call trace.

A cache whose root is group-writable and setgid (``chmod 2775``, as git's
``core.sharedRepository=group``) is shared by the users of that group: a
directory made inside such a one is made group-writable and setgid too, and
a file that others must write later (locks, leases, part files, the chunk
index) is made group-writable, whatever the umask of the process that
creates them.  Nothing is ever made writable by others than the group.
"""

from __future__ import annotations

import errno
import os
import stat
from _thread import allocate_lock
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# re, shutil (with zlib, bz2 and lzma), threading and warnings are imported where used: a service's
# warm path imports this module and needs none of them.
_counter = 0
_TEMP = r"(\d+-[0-9a-f]{12})-\d+-[0-9a-f]{6}$"
_counter_lock = allocate_lock()
_token = ("", 0)  # this process's owner token and the pid it was made in (a forked child makes its own)


def process_token() -> str:
    """A name for this process that no other process, in any PID namespace or on any host, shares: its pid
    (for people reading ``tmp/``) and 48 random bits.  A writer proves it is alive with a lock named after it
    (see ``local.owners``), never by its pid, which another container's process cannot see."""
    global _token
    if _token[1] != os.getpid():
        _token = (f"{os.getpid()}-{os.urandom(6).hex()}", os.getpid())
    return _token[0]


def temp_name(prefix: str = "") -> str:
    """A name unique across threads and processes, carrying the owner token of the process that made it."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    return f"{prefix}{process_token()}-{n}-{os.urandom(3).hex()}"


def token_of_temp(name: str) -> str | None:
    """The owner token embedded in a temp_name, or None for other names."""
    import re

    m = re.search(_TEMP, name)
    return m.group(1) if m else None


def still_named(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (a lock file a removal unlinked while this process
    waited for its lock holds nothing: the caller opens it anew)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``.  A write that meets a full disk or a file-size limit part way
    returns short and only the next one raises: ignoring the count would leave a hole that looks written."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def copy_range(src: int, dst: int, length: int, src_offset: int, dst_offset: int) -> None:
    """Copy ``length`` bytes from ``src`` to ``dst`` by the kernel (``copy_file_range``: no byte passes
    through this process, and filesystems that share extents share them); by ``pread``/``pwrite`` where the
    kernel cannot.  A source shorter than asked leaves the rest unwritten (a hole the caller's hash finds)."""
    while length > 0:
        try:
            done = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        except (AttributeError, OSError) as e:  # not Linux, or across filesystems, or one that cannot
            if isinstance(e, OSError) and e.errno not in _NO_KERNEL_COPY:
                raise
            done = 0
        if done == 0:
            _copy_by_reading(src, dst, length, src_offset, dst_offset)
            return
        length, src_offset, dst_offset = length - done, src_offset + done, dst_offset + done


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def _copy_by_reading(src: int, dst: int, length: int, src_offset: int, dst_offset: int) -> None:
    while length > 0:
        data = os.pread(src, min(length, 8 << 20), src_offset)
        if not data:
            return
        pwrite_all(dst, data, dst_offset)
        length, src_offset, dst_offset = length - len(data), src_offset + len(data), dst_offset + len(data)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (see ``pwrite_all``; for an ``O_APPEND`` log)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait
_libc: object = None


def _c_library() -> Any:
    """libc through ctypes (imported when first needed), or False where it has neither call."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            lib.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            lib.syncfs.argtypes = (ctypes.c_int,)
            _libc = lib
        except (OSError, AttributeError, ImportError):
            _libc = False
    return _libc


def sync_filesystem(path: str | Path) -> bool:
    """``syncfs(2)`` the filesystem holding ``path``: every dirty file on it reaches the disk, in one call.

    Many small files are made durable far faster this way than by an fsync each (10,000 files: one
    call instead of 10,000 journal commits).  Returns False where the call is missing (not Linux):
    the caller then fsyncs file by file.  A failed sync (EIO) raises: the data may not be on disk."""
    lib = _c_library()
    if not lib:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if lib.syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to disk now, without waiting (Linux
    ``sync_file_range``): a later fsync then waits only for the rest.  Durability still comes from
    that fsync; elsewhere this does nothing."""
    lib = _c_library()
    if lib:
        lib.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


SYNCFS_MIN_FILES = 64  # from this many files on, one syncfs beats an fsync (a journal commit) each


def fsync_all(files: list[str], dirs: list[str]) -> None:
    """Make these files' data and these directories' entries durable: an fsync each, or for many, one
    ``syncfs`` of their filesystem (Linux), which flushes them all with one journal commit.  They must all
    be on one filesystem (a cache's blobs and tmp are)."""
    paths = files + dirs
    if len(paths) >= SYNCFS_MIN_FILES and sync_filesystem(paths[0]):
        return
    for f in files:
        fsync_path(f)
    for d in dirs:
        fsync_dir(d)


_SHARED = stat.S_ISGID | stat.S_IWGRP  # a directory a group shares: group-writable, new entries in its group


def _shared(directory: str) -> bool:
    return os.stat(directory).st_mode & _SHARED == _SHARED


def make_dirs(path: str | os.PathLike[str]) -> list[str]:
    """``mkdir -p``; a directory made inside a shared one (see above) is shared too.  Returns the directories
    it made, outermost first (none: ``path`` was there)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    made: list[str] = []
    try:
        os.mkdir(path)
    except FileExistsError:
        return []
    except FileNotFoundError:
        if parent == path:
            raise
        made = make_dirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            return made
    if _shared(parent):
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_IRWXG | stat.S_ISGID)
    return [*made, path]


def holding_dirs(made: list[str]) -> list[str]:
    """The directories whose entries ``make_dirs`` changed when it made ``made``: each one's parent."""
    return sorted({os.path.dirname(d) for d in made})


def make_durable_dirs(path: str | os.PathLike[str]) -> None:
    """``make_dirs`` for a folder a name is about to be published in: the parent of every directory it makes is
    flushed, so after a power loss the folders leading to the name are there whenever the name is.  A folder
    there already (the usual case) costs nothing.  (A folder another process has just made, and not flushed
    yet, is taken as it is: only a lock would close that window.)"""
    for d in reversed(holding_dirs(make_dirs(path))):
        fsync_dir(d)


def open_shared(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``O_CREAT``; a file this process owns in a shared directory is made group-readable
    and -writable, so the group's other users can lock, resume or update it."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        st = os.fstat(fd)
        mine_and_private = st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWGRP
        if mine_and_private and _shared(os.path.dirname(os.path.abspath(path))):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: Path, data: bytes, tmp_dir: Path, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, replacing what was there; durable when it returns, unless
    ``durable`` is False (a copy of what can be fetched again: a power loss may lose it, never tear it)."""
    if durable:
        make_durable_dirs(path.parent)  # first: a folder made here (a repository's root) is made durably
    else:
        make_dirs(path.parent)
    tmp = tmp_dir / temp_name("w")
    make_dirs(tmp_dir)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if durable:
            move_into_place(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new(path: Path, data: bytes, tmp_dir: Path) -> bool:
    """Write an immutable object (fsynced) unless it exists; see ``publish``."""
    make_durable_dirs(path.parent)  # first: a folder made here (a repository's root) is made durably
    make_dirs(tmp_dir)
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
    """Move a finished (fsynced) immutable object into place unless it already exists; either way its name
    is durable when this returns (see ``make_durable_dirs``), so a ref written next never outlives it.

    Returns False when another writer got there first; the temporary is then
    removed.  Content-addressed objects are never rewritten.
    """
    make_durable_dirs(path.parent)
    try:
        os.link(tmp, path)
        linked = True
    except FileExistsError:
        linked = False
    tmp.unlink()
    fsync_dir(path.parent)  # also when another writer linked it: it may not have flushed it yet
    return linked


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename a finished (fsynced) file to ``path``, replacing what was there; its name is durable when this
    returns, as with ``publish``."""
    make_durable_dirs(path.parent)
    os.replace(tmp, path)
    fsync_dir(path.parent)


_COPY_WARNED: set[str] = set()  # reasons already given in this process


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hardlink ``src`` at ``dst``; where the system refuses the link (another filesystem, another user's
    file in a shared cache, a filesystem without hardlinks), copy it and warn once."""
    try:
        os.link(src, dst)
    except OSError as e:
        copy_instead(src, dst, e)


def copy_instead(src: str | Path, dst: str | Path, refused: OSError | None = None) -> None:
    """Copy ``src`` to ``dst`` (with its mode) because a hardlink was refused with ``refused``: warns once per
    reason, and re-raises ``refused`` when a copy would not get around it.  ``refused`` None: a later file
    of the same kind, whose link is not tried again."""
    if refused is not None:
        why = _why_no_link(refused, src)
        with _counter_lock:  # snapshots are linked by two threads: still one warning
            first = why not in _COPY_WARNED
            _COPY_WARNED.add(why)
        if first:
            import warnings

            warnings.warn(f"cas: cannot hardlink {src} into {os.path.dirname(dst)}: {why}; snapshot files are copied "
                          "instead, and take extra disk space", RuntimeWarning, stacklevel=4)  # fmt: skip
    import shutil

    shutil.copyfile(src, dst)
    os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode))


def _why_no_link(e: OSError, src: str | Path) -> str:
    """Why a hardlink was refused, for the warning; re-raises a failure a copy would not get around."""
    if e.errno == errno.EXDEV:
        return "the snapshots are on another filesystem than the blobs"
    if e.errno == errno.EPERM and os.stat(src).st_uid != os.geteuid():
        return ("the blob belongs to another user and this system forbids hardlinking other users' files "
                "(fs.protected_hardlinks); materialize models as the user who stored or pulled them")  # fmt: skip
    if e.errno in (errno.EPERM, errno.EMLINK, errno.ENOTSUP):
        return f"this filesystem refuses the link ({e.strerror})"
    raise e


def make_writable_tree(path: Path) -> None:
    """Give the owner write permission on every directory below ``path`` that this process cannot write,
    so it can be removed (PermissionError: a read-only directory of another user)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
            if os.access(d, os.W_OK | os.X_OK):
                continue
            try:
                os.chmod(d, 0o755)
            except FileNotFoundError:
                pass


TRASH = ".trash-"


def remove_tree(path: Path, *, move_aside: bool = True) -> bool:
    """Remove a directory tree, including read-only snapshot directories; False if it was moved aside.

    In a shared cache a read-only tree another user made cannot be opened up by this one (only an owner
    may chmod): it is renamed to a ``.trash-`` name beside it, which needs only its parent to be
    writable, and is removed by its owner's next ``cas verify``.  ``move_aside=False`` raises instead."""
    if not os.path.lexists(path):
        return True
    try:
        make_writable_tree(path)
    except PermissionError:
        if not move_aside:
            raise
        os.rename(path, os.path.join(os.path.dirname(path), temp_name(TRASH)))
        return False
    import shutil

    shutil.rmtree(path, ignore_errors=False)
    return True
