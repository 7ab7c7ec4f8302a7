"""cas: a content-addressed artifact cache for ML models.

Everything a user or a test needs is importable from here: the cache, push
and pull, listing and checking repositories, their result types and every
error.  The module-level functions act on the default cache (``$CAS_HOME``,
else ``~/.cache/cas``), like ``bentoml.models``; use ``Cache(root)`` for
another.  Repository code (and with it asyncio, msgpack's streaming and
zstandard) is imported only when a repository is used: ``import cas`` stays
cheap for a service's warm path.
"""

from __future__ import annotations

import builtins
import os

from .cache import Cache
from .content.ref import ModelInfo
from .errors import (
    CacheBusy,
    CacheNotWritable,
    CasError,
    CorruptObject,
    InvalidInput,
    InvalidManifest,
    InvalidTag,
    NotFound,
    OutOfSpace,
    RepoError,
    Untrusted,
)
from .local.cache import Progress, default_root
from .local.storing import Staging
from .repo import CONCURRENCY
from .system import forking  # noqa: F401 - a forked child re-imports what other threads were importing

TYPE_CHECKING = False  # typing costs 2 ms to import, which every service would pay on start
if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import Any

    from .local.gc import GcReport
    from .local.space import SpaceReport
    from .local.verify import VerifyReport
    from .repo.check import RepoReport
    from .sync.archive import ArchiveStats
    from .sync.exportfile import Source
    from .sync.prune import PruneReport
    from .sync.pull import PullEstimate, PullStats
    from .sync.push import PushStats
    from .trust.keys import SigningKey
    from .trust.policy import TrustPolicy

__all__ = [
    "ArchiveStats",
    "Cache",
    "CacheBusy",
    "CacheNotWritable",
    "CasError",
    "CorruptObject",
    "GcReport",
    "InvalidInput",
    "InvalidManifest",
    "InvalidTag",
    "ModelInfo",
    "NotFound",
    "OutOfSpace",
    "PruneReport",
    "PullEstimate",
    "PullStats",
    "PushStats",
    "RepoError",
    "RepoReport",
    "SigningKey",
    "SpaceReport",
    "Staging",
    "TrustPolicy",
    "Untrusted",
    "VerifyReport",
    "add",
    "check_repository",
    "create",
    "default_cache",
    "default_root",
    "delete",
    "du",
    "export_model",
    "gc",
    "get",
    "import_bento",
    "import_hf",
    "import_model",
    "import_oci",
    "list",
    "list_remote",
    "materialize",
    "prune_remote",
    "pull",
    "push",
    "push_modelpack",
    "remove_remote",
    "resolve",
    "verify",
]

_LAZY = {"ArchiveStats": ".sync.archive", "PruneReport": ".sync.prune", "PullStats": ".sync.pull",
         "PullEstimate": ".sync.pull", "PushStats": ".sync.push", "RepoReport": ".repo.check",
         "VerifyReport": ".local.verify", "GcReport": ".local.gc", "SpaceReport": ".local.space",
         "SigningKey": ".trust.keys", "TrustPolicy": ".trust.policy"}  # fmt: skip
_default: Cache | None = None
_default_env: tuple[str | None, str | None] = (None, None)


def __getattr__(name: str) -> Any:
    """The result types of checks and repository operations, imported when first named."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'cas' has no attribute {name!r}")


def default_cache() -> Cache:
    """The cache at ``$CAS_HOME`` (else ``$XDG_CACHE_HOME/cas``, else ``~/.cache/cas``), re-chosen when those change."""
    global _default, _default_env
    env = (os.environ.get("CAS_HOME"), os.environ.get("XDG_CACHE_HOME"))
    if _default is None or env != _default_env:
        _default, _default_env = Cache(), env
    return _default


def add(path: str | os.PathLike[str], tag: str, *, labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None, progress: Progress | None = None,
        created: float | None = None) -> ModelInfo:  # fmt: skip
    """Copy a directory or file into the default cache under ``tag``; see ``Cache.add``."""
    return default_cache().add(path, tag, labels=labels, metadata=metadata, progress=progress, created=created)


def create(name: str, *, labels: dict[str, str] | None = None,
           metadata: dict[str, Any] | None = None) -> AbstractContextManager[Staging]:  # fmt: skip
    """Write a new model straight into the default cache; see ``Cache.create``."""
    return default_cache().create(name, labels=labels, metadata=metadata)


def get(tag: str) -> ModelInfo:
    return default_cache().get(tag)


def gc(max_size: int | str | None = None, *, dry_run: bool = False) -> GcReport:
    """Free what no model needs in the default cache, and fit it to ``max_size``; see ``Cache.gc``."""
    return default_cache().gc(max_size, dry_run=dry_run)


def du(name: str | None = None) -> SpaceReport:
    """What each version in the default cache takes on disk; see ``Cache.du``."""
    return default_cache().du(name)


def import_hf(source: str | os.PathLike[str], tag: str | None = None, *, revision: str | None = None,
              repo_type: str = "model", hub_cache: str | os.PathLike[str] | None = None,
              cache: Cache | None = None) -> ModelInfo:  # fmt: skip
    """Store a model from the local Hugging Face cache (a repo id or a snapshot folder); see ``cas.foreign.hf``."""
    from .foreign.hf import import_hf

    return import_hf(cache or default_cache(), source, tag, revision=revision, repo_type=repo_type,
                     hub_cache=hub_cache)  # fmt: skip


def import_oci(reference: str, tag: str | None = None, *, cache: Cache | None = None) -> ModelInfo:
    """Store a model artifact of an OCI registry (ModelPack, KitOps, files pushed with oras), named as docker
    names it (``HOST/REPOSITORY:TAG``); see ``cas.foreign.ociartifact``."""
    from .foreign.ociartifact import import_oci

    return import_oci(cache or default_cache(), reference, tag).info


def push_modelpack(tag: str, remote: str, *, cache: Cache | None = None) -> str:
    """Push a stored version to ``oci://HOST/NAMESPACE`` as a ModelPack artifact that tools without cas read;
    returns its reference (``HOST/NAMESPACE/NAME:VERSION``)."""
    from .foreign.ociartifact import push_modelpack

    return push_modelpack(cache or default_cache(), tag, remote).reference


def import_bento(tag: str, name: str | None = None, *, cache: Cache | None = None) -> ModelInfo:
    """Store a model from the BentoML store (``$BENTOML_HOME``) under ``name`` or its own tag; see
    ``cas.foreign.bento``."""
    from .foreign.bento import import_bento

    return import_bento(cache or default_cache(), tag, name)


def list(name: str | None = None) -> builtins.list[ModelInfo]:
    return default_cache().list(name)


def delete(tag: str) -> builtins.list[ModelInfo]:
    return default_cache().delete(tag)


def materialize(tag: str) -> Path:
    return default_cache().materialize(tag)


def verify(tag: str | None = None, *, repair: bool = True) -> VerifyReport:
    return default_cache().verify(tag, repair=repair)


def resolve(tag: str, *, remote: str | None = None, refresh: bool = False, offline: bool | None = None) -> ModelInfo:
    """The model a service should use for ``tag`` in the default cache; see ``Cache.resolve``."""
    return default_cache().resolve(tag, remote=remote, refresh=refresh, offline=offline)


def pull(tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
         progress: Progress | None = None) -> PullStats:  # fmt: skip
    """Fetch ``tag`` into the default cache; see ``Cache.pull``."""
    return default_cache().pull(tag, remote, concurrency=concurrency, progress=progress)


def push(tag: str, remote: str | None = None, *, progress: Progress | None = None) -> PushStats:
    """Upload ``tag`` from the default cache; see ``Cache.push``."""
    return default_cache().push(tag, remote, progress=progress)


def export_model(tag: str, dest: Source, *, progress: Progress | None = None) -> ArchiveStats:
    """Write ``tag`` from the default cache as one export file; see ``Cache.export_model``."""
    return default_cache().export_model(tag, dest, progress=progress)


def import_model(src: Source, *, progress: Progress | None = None) -> ArchiveStats:
    """Store the model of an export file in the default cache; see ``Cache.import_model``."""
    return default_cache().import_model(src, progress=progress)


def list_remote(remote: str | None = None, name: str | None = None) -> builtins.list[ModelInfo]:
    """The models in a repository (``$CAS_REMOTE`` by default), newest first."""
    from .repo.repository import list_remote

    return list_remote(remote, name)


def check_repository(remote: str | None = None, *, deep: bool = False) -> RepoReport:
    """Check a repository (``$CAS_REMOTE`` by default): every ref whole and, ``deep``, every chunk."""
    from .repo.check import check_repository

    return check_repository(remote, deep=deep)


def remove_remote(tags: Iterable[str], remote: str | None = None) -> builtins.list[ModelInfo]:
    """Remove refs (``name:version``, ``name:latest``, ``name``) from a repository; ``prune`` deletes the data."""
    from .sync.prune import remove_remote

    return remove_remote(tags, remote)


def prune_remote(remote: str | None = None, *, grace: float = 86_400.0, max_unused: float = 0.10,
                 dry_run: bool = False) -> PruneReport:  # fmt: skip
    """Mark what no ref reaches in a repository, delete what was marked ``grace`` seconds ago and is still
    unreachable, repack packs more than ``max_unused`` dead; see the module ``cas.sync.prune``.  (Named like
    ``list_remote``: a function ``cas.sync.prune`` would be shadowed by that module once it is imported.)"""
    from .sync.prune import prune

    return prune(remote, grace=grace, max_unused=max_unused, dry_run=dry_run)
