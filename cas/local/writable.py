"""Whether this process may write in a cache: a refused write turned into one line naming what to run.

A cache on a read-only volume, or one another user provisioned, is a normal
sight on a fleet: services read it, and only its owner writes.  A write such
a cache refuses is reported before any work where it is certain, and
otherwise as the ``CacheNotWritable`` it is; a refusal elsewhere (a
repository folder) is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from ..errors import CacheNotWritable, CasError


@contextlib.contextmanager
def writing(root: str, tag: str, remedy: str) -> Iterator[None]:
    """Turn a refused write inside the cache at ``root`` into one clear error naming ``remedy``.  Locks are
    opened read-only or skipped in a cache this process cannot write (see ``locks``), so no lock would stop
    a writer before its first write: such a cache is refused before any work."""
    try:
        check_writable(root)
        yield
    except OSError as e:
        if isinstance(e, CasError) or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        where = os.path.abspath(os.fspath(e.filename or ""))
        if where != root and not where.startswith(root + os.sep):
            raise
        raise CacheNotWritable(
            f"the cache at {root} is not writable by this process: {e.strerror} ({e.filename}); {tag} "
            f"needs a write there: run {remedy} as the cache's owner when provisioning, or use a cache this "
            "user can write (CAS_HOME, or cache= in Python)"
        ) from None


def check_writable(root: str) -> None:
    """Raise the OSError a write in the cache would meet, where it is certain (a new cache: none)."""
    if not os.path.isdir(root):
        return
    if hasattr(os, "statvfs") and os.statvfs(root).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), root)
    if not os.access(root, os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), root)
