"""The refs container of a cache: which model version each tag names, and which version is newest.

    refs/<name>/<version>     ref records (msgpack), written once; removed by ``cas rm``
    refs/<name>/.latest       symlink to the newest version's ref: a hint, never the truth

A ref is the commit point of a model: its tree and blobs are stored before
it, so a reader never sees a ref whose data is missing.  ``create_if_absent``
is the only way to write one, under the name's lock: the same content under
an existing version is a no-op, other content is refused.  The ``.latest``
link makes ``name:latest`` one read on the warm path; it is written before a
new ref and fixed after a removal, so a crash leaves it dangling at worst,
and then the versions are scanned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from ..content import ref
from ..content.ref import ModelInfo, recency
from ..content.tags import Tag
from ..errors import CasError, InvalidInput, NotFound
from ..system.dirs import make_durable_dirs
from ..system.files import atomic_write
from ..system.names import temp_name
from . import owners
from .locks import Locks

LATEST_LINK = ".latest"


class Refs:
    """Ref records under ``<cache>/refs``; ``lock(name)`` serializes the writers of one name across processes."""

    def __init__(self, cache_root: str, locks: Locks):
        self._cache_root = cache_root
        self._dir = cache_root + "/refs"  # plain strings: the warm path avoids pathlib
        self._locks = locks

    def lock(self, name: str) -> AbstractContextManager[None]:
        return self._locks.hold(f"ref-{name}")

    def not_found(self, tag: str) -> NotFound:
        return NotFound(
            f"model {tag} is not in the cache at {self._cache_root}; store it with "
            f"'cas add PATH {tag.split(':')[0]}' or set CAS_REMOTE to pull it from a repository"
        )

    def get(self, tag: Tag) -> ModelInfo:
        """The ref ``tag`` names; ``name:latest`` is the newest version."""
        if tag.is_latest:
            return self.latest(tag.name)
        try:
            data = _read_small(f"{self._dir}/{tag.name}/{tag.version}")
        except FileNotFoundError:
            raise self.not_found(str(tag)) from None
        return ref.decode(data, name=tag.name, version=tag.version, local=True)

    def exists(self, info: ModelInfo) -> bool:
        return os.path.exists(f"{self._dir}/{info.name}/{info.version}")

    def latest(self, name: str) -> ModelInfo:
        try:
            return ref.decode(_read_small(f"{self._dir}/{name}/{LATEST_LINK}"), name=name, local=True)
        except (FileNotFoundError, CasError):
            pass
        newest = self.newest(name)
        if newest is None:
            raise self.not_found(f"{name}:latest")
        return newest

    def newest(self, name: str) -> ModelInfo | None:
        versions = self.versions(name)
        return max(versions, key=recency) if versions else None

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._dir) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def versions(self, name: str) -> list[ModelInfo]:
        """Every version of ``name``, in no order; a ref removed while listing is skipped."""
        out = []
        for version in self._version_names(name):
            try:
                out.append(
                    ref.decode(_read_small(f"{self._dir}/{name}/{version}"), name=name, version=version, local=True)
                )
            except FileNotFoundError:
                continue
        return out

    def records(self) -> Iterator[tuple[str, str, ModelInfo | CasError]]:
        """Every ref as (name, version, its record or why it cannot be read): for verify."""
        for name in self.names():
            for version in sorted(self._version_names(name)):
                try:
                    yield name, version, ref.decode(Path(self._dir, name, version).read_bytes(), name=name,
                                                    version=version, local=True)  # fmt: skip
                except CasError as e:
                    yield name, version, e

    def _version_names(self, name: str) -> list[str]:
        try:
            return [v for v in os.listdir(f"{self._dir}/{name}") if not v.startswith(".")]
        except FileNotFoundError:
            return []

    def create_if_absent(self, info: ModelInfo, remote: str | None = None) -> ModelInfo:
        """Write ``info`` as the ref of its tag unless it exists: the same root returns the existing ref (made
        whole if ``info`` is whole and it was partial), another root is refused.  Its tree and blobs must be
        stored already (the ref is the commit point).
        ``remote``: a repository holding this version (it was pulled from there), recorded either way."""
        path = Path(self._dir, info.name, info.version)
        with self.lock(info.name):
            if path.exists():
                data = path.read_bytes()
                existing = ref.decode(data, name=info.name, version=info.version, local=True)
                if existing.root != info.root:
                    raise InvalidInput(
                        f"model {info.tag} already exists with other content (root {existing.root[:12]}); "
                        f"store under a new version, or remove it first with 'cas rm {info.tag}'"
                    )
                remotes = ref.remotes_of(data)
                if existing.partial and not info.partial:  # every file is stored now
                    existing = existing.as_partial(False)
                    added = [remote] if remote and remote not in remotes else []
                    self._write(path, existing.encode([*remotes, *added]))
                elif remote is not None:
                    self._record_remote(path, existing, remotes, remote)
                return existing
            newest = self.newest(info.name)
            if newest is None or recency(info) > recency(newest):
                self._point_latest(info.name, info)  # before the ref: a crash in between leaves it dangling
            self._write(path, info.encode([remote] if remote else None))
        return info

    def add_remote(self, info: ModelInfo, remote: str) -> None:
        """Record that a repository holds this version now (it was pushed there); gone already: nothing."""
        path = Path(self._dir, info.name, info.version)
        with self.lock(info.name):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return
            existing = ref.decode(data, name=info.name, version=info.version, local=True)
            if existing.root == info.root:
                self._record_remote(path, existing, ref.remotes_of(data), remote)

    def remotes(self, info: ModelInfo) -> list[str]:
        """The repositories this version was pulled from or pushed to; none: it is stored here alone."""
        try:
            return ref.remotes_of(Path(self._dir, info.name, info.version).read_bytes())
        except FileNotFoundError:
            return []

    def _record_remote(self, path: Path, info: ModelInfo, remotes: list[str], remote: str) -> None:
        """Rewrite a ref record with ``remote`` added (the caller holds the name's lock)."""
        if remote not in remotes:
            self._write(path, info.encode([*remotes, remote]))

    def _write(self, path: Path, record: bytes) -> None:
        """Replace a ref record through a temporary in ``tmp/``, written outside the objects lock: this process
        holds its owner lock first, so a gc elsewhere (another container on this volume) leaves it alone."""
        owners.claim(self._locks.dir)
        atomic_write(path, record, Path(self._cache_root, "tmp"))

    def stored_at(self, info: ModelInfo) -> float:
        """When this version was stored, pulled or last pushed here (its record's mtime), for recency."""
        try:
            return os.stat(f"{self._dir}/{info.name}/{info.version}").st_mtime
        except FileNotFoundError:
            return 0.0

    def remove(self, name: str, versions: list[str]) -> None:
        """Remove versions of ``name`` and point ``.latest`` at the newest left (the folder goes with the last)."""
        with self.lock(name):
            for version in versions:
                Path(self._dir, name, version).unlink(missing_ok=True)
            newest = self.newest(name)  # after the unlink: a crash in between leaves the link dangling
            self._point_latest(name, newest)
            if newest is None:
                with contextlib.suppress(OSError):
                    os.rmdir(Path(self._dir, name))

    def latest_link(self, name: str) -> str | None:
        """The version ``.latest`` names, if it is a link."""
        link = Path(self._dir, name, LATEST_LINK)
        return os.readlink(link) if link.is_symlink() else None

    def repair_latest(self, name: str) -> None:
        with self.lock(name):
            self._point_latest(name, self.newest(name))

    def _point_latest(self, name: str, info: ModelInfo | None) -> None:
        """Point ``.latest`` at ``info`` (None: remove it); the caller holds the name's lock."""
        link = Path(self._dir, name, LATEST_LINK)
        if info is None:
            link.unlink(missing_ok=True)
            return
        make_durable_dirs(link.parent)  # the folder of the ref written next, if this is the name's first
        tmp = link.with_name(temp_name(".latest-"))
        os.symlink(info.version, tmp)
        os.replace(tmp, link)


def _read_small(path: str) -> bytes:
    """Read a ref record with few system calls and no large buffer (it is on the warm path)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
        if len(data) < 4096:
            return data
        parts = [data]
        while (data := os.read(fd, 1 << 16)) and sum(map(len, parts)) <= ref.MAX_REF_BYTES:
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)
