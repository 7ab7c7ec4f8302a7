"""Files: written whole, copied by the kernel, and moved into place atomically and durably.

An immutable object is written under a temporary name, fsynced, and linked
to its name only if that name is free (``publish``); a mutable document
replaces its name by rename (``atomic_write``).  Either way its folder is
flushed before the call returns (see ``durable``).
"""

from __future__ import annotations

import errno
import os
import stat
from _thread import allocate_lock

from .dirs import make_dirs, make_durable_dirs
from .durable import fsync_dir
from .names import temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# shutil and warnings are imported where used: a service's warm path imports this module and needs neither.


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
_warned_lock = allocate_lock()


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
        with _warned_lock:  # snapshots are linked by two threads: still one warning
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
