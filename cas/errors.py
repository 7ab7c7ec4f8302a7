"""Every error cas raises on purpose derives from CasError.

Each message says what went wrong and what to do next, so the CLI can print
it as one line and a service log shows something actionable.
"""

from __future__ import annotations


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


class RepoError(CasError):
    """A repository could not be read or written."""


class CacheBusy(CasError):
    """Another process holds a lock for longer than we are willing to wait."""


class CacheNotWritable(CasError, PermissionError):
    """The cache is read-only to this process (a read-only volume, or another user's files) and the
    operation needed to write: materialize or pull at provisioning time, as the cache's owner."""
