"""Every error cas raises on purpose derives from CasError.

Each message says what went wrong and what to do next, so the CLI can print
it as one line and a service log shows something actionable.
"""

from __future__ import annotations

import errno

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit (ulimit -f)


class CasError(Exception):
    """Base class: an expected failure with a message meant for people."""


class InvalidTag(CasError, ValueError):
    """A tag, name or version does not follow the tag syntax."""


class NotFound(CasError, LookupError):
    """A model, tag or object that was asked for does not exist."""


class InvalidInput(CasError, ValueError):
    """A path or argument given by the user cannot be stored."""


class InvalidManifest(CasError, ValueError):
    """A tree or ref document is malformed or hostile."""


class CorruptObject(CasError):
    """Stored bytes do not hash to the name they are stored under."""


class Untrusted(CasError):
    """A model or a trust document is not vouched for by keys the trust policy trusts for it (unsigned,
    signed by the wrong key, older than what this host has seen, expired, or not matching its signature)."""


class RepoError(CasError):
    """A repository could not be read or written."""


class CacheBusy(CasError):
    """Another process holds a lock for longer than we are willing to wait."""


class CacheNotWritable(CasError, PermissionError):
    """The cache is read-only to this process (a read-only volume, or another user's files) and the
    operation needed to write: materialize or pull at provisioning time, as the cache's owner."""


class OutOfSpace(CasError, OSError):
    """A write into the cache failed for lack of space (a full disk, a quota) or a file-size limit; what was
    written half is removed, so running the command again after freeing space is safe."""


def out_of_space_advice(e: OSError, cache_root: object) -> str:
    """What to do about a full disk, a quota or a size limit, naming the cache."""
    if e.errno == errno.EFBIG:
        return "a limit on file size (ulimit -f) stopped a write; raise it and run the command again"
    return (
        f"free space on the disk written to (the cache is {cache_root}: 'cas gc --max-size SIZE' evicts "
        "models that can be pulled again), or set CAS_HOME to a larger disk; then run the command again"
    )
