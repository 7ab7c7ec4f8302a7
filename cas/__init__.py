"""cas: a content-addressed artifact cache for ML models.

The module-level functions act on the default cache (``$CAS_HOME``, else
``~/.cache/cas``), like ``bentoml.models``; use ``Cache(root)`` for another.
"""

from __future__ import annotations

import os
from typing import Any

from .cache import Cache, Staging, VerifyReport, default_root
from .errors import (
    CacheBusy,
    CacheNotWritable,
    CasError,
    CorruptObject,
    InvalidInput,
    InvalidManifest,
    InvalidTag,
    NotFound,
    RepoError,
)
from .ref import ModelInfo

__all__ = [
    "Cache",
    "CacheBusy",
    "CacheNotWritable",
    "CasError",
    "CorruptObject",
    "InvalidInput",
    "InvalidManifest",
    "InvalidTag",
    "ModelInfo",
    "NotFound",
    "RepoError",
    "Staging",
    "VerifyReport",
    "add",
    "create",
    "default_cache",
    "default_root",
    "delete",
    "get",
    "list",
    "materialize",
]

_default: Cache | None = None
_default_env: tuple[str | None, str | None] = (None, None)


def default_cache() -> Cache:
    """The cache at ``$CAS_HOME`` (else ``~/.cache/cas``), re-chosen when those variables change."""
    global _default, _default_env
    env = (os.environ.get("CAS_HOME"), os.environ.get("XDG_CACHE_HOME"))
    if _default is None or env != _default_env:
        _default, _default_env = Cache(), env
    return _default


def add(path: Any, tag: str, **kwargs: Any) -> ModelInfo:
    return default_cache().add(path, tag, **kwargs)


def create(name: str, **kwargs: Any):
    return default_cache().create(name, **kwargs)


def get(tag: str) -> ModelInfo:
    return default_cache().get(tag)


def list(name: str | None = None) -> list[ModelInfo]:
    return default_cache().list(name)


def delete(tag: str) -> list[ModelInfo]:
    return default_cache().delete(tag)


def materialize(tag: str) -> Any:
    return default_cache().materialize(tag)
