"""Durability: making what was written survive a power loss, by fsync, or by one ``syncfs`` for many files.

A power loss is a crash that can also undo what the disk was not told to
keep.  So ``files.publish``, ``files.move_into_place`` and their callers
make a name durable before anything that refers to it is written (blobs
before their tree, packs before the locator, everything before the ref):
the file is fsynced, then linked or renamed, then its folder fsynced; and
a folder made on the way (``trees/44/``, ``refs/NAME/``) is fsynced in its
parent first (``dirs.make_durable_dirs``).  ext4 and XFS happen to commit
these in order; btrfs and others need the flushes.
``tests/reliability/test_durability.py`` checks the order in a system call
trace.
"""

from __future__ import annotations

import os
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


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
