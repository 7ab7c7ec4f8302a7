"""The local cache of one host: refs, trees, blobs and snapshots on disk.

Layout under the cache root::

    refs/<name>/<version>     ref records (msgpack), replaced atomically
    trees/<ab>/<root>         tree manifests, immutable
    blobs/<ab>/<file id>      whole files, mode 0444 (``.x`` suffix: 0555)
    snapshots/<root>/         a model's files as hardlinks to blobs
    tmp/                      staging; same filesystem as blobs
    locks/                    lock files

A snapshot directory is built under a temporary name inside ``snapshots/``
and renamed into place when complete: its presence is its completion
marker, so the warm path needs one ``stat`` and a model directory holds
nothing but the model's files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import leases, tags
from . import ref as refs
from .digest import hex_id
from .errors import CacheNotWritable, CasError, CorruptObject, InvalidInput, NotFound
from .fsutil import (
    atomic_write,
    fsync_dir,
    fsync_path,
    link_or_copy,
    make_dirs,
    publish,
    remove_tree,
    temp_name,
    write_new,
)
from .ingest import digest_file
from .ref import ModelInfo
from .tree import FileEntry, Tree, check_path, root_of
from .tree import decode as decode_tree
from .verify import VerifyReport, verify_cache

Progress = Callable[[int], None]


def default_root() -> Path:
    """``$CAS_HOME``, else ``$XDG_CACHE_HOME/cas``, else ``~/.cache/cas``."""
    return Path(_default_root())


def _default_root() -> str:
    home = os.environ.get("CAS_HOME")
    if home:
        return home
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg, "cas") if xdg else os.path.expanduser("~/.cache/cas")


class Staging:
    """A directory inside the cache to write a new model into (see ``Cache.create``)."""

    def __init__(self, path: Path, tag: str):
        self.path = path
        self.tag = tag

    def __repr__(self) -> str:
        return f"Staging(tag={self.tag!r}, path={str(self.path)!r})"


class _Source:
    """One file to ingest: where it goes in the tree and where it is on disk."""

    __slots__ = ("path", "src", "executable")

    def __init__(self, path: str, src: str, executable: bool):
        self.path, self.src, self.executable = path, src, executable


class Cache:
    """A content-addressed model cache rooted at one directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, durable: bool | None = None):
        """``durable`` (default: true unless ``CAS_DURABLE=0``) fsyncs every blob before it is
        published, so a power loss can never leave a blob whose bytes do not match its name;
        turn it off for throwaway caches, where it roughly halves ``add`` time."""
        self._durable = durable
        self._chunks = None
        # Plain strings: the warm path (read a ref, stat a snapshot) avoids pathlib.
        self._root = os.path.abspath(os.path.expanduser(os.fspath(root) if root is not None else _default_root()))
        self._refs = self._root + "/refs"
        self._snaps = self._root + "/snapshots"

    @property
    def durable(self) -> bool:
        if self._durable is None:  # read when first writing: the warm path never needs it
            self._durable = os.environ.get("CAS_DURABLE", "1") not in ("0", "false", "no")
        return self._durable

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def _tmp(self) -> Path:
        return Path(self._root, "tmp")

    @property
    def _snapshots(self) -> Path:
        return Path(self._snaps)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def __getstate__(self) -> dict[str, Any]:
        """A cache travels (pickle, cloudpickle) as its root: the open chunk index stays behind."""
        return {"root": self._root, "durable": self._durable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], durable=state["durable"])  # type: ignore[misc]

    # -- layout -------------------------------------------------------------

    def _ref_path(self, name: str, version: str) -> Path:
        return Path(self._refs, name, version)

    def _tree_path(self, root: str) -> Path:
        return self.root / "trees" / root[:2] / root

    def _blob_path(self, file_id: bytes, executable: bool) -> Path:
        h = hex_id(file_id)
        return self.root / "blobs" / h[:2] / (h + ".x" if executable else h)

    def snapshot_path(self, root: str) -> Path:
        """Where the snapshot of a tree lives once materialized."""
        return self._snapshots / root

    def _lock(self, name: str, *, shared: bool = False):
        from .locks import locked

        return locked(self.root / "locks" / name, shared=shared)

    def _alock(self, name: str, *, shared: bool = False):
        """``_lock`` for coroutines on a private loop: a cancelled task stops waiting."""
        from .locks import alocked

        return alocked(self.root / "locks" / name, shared=shared)

    def _objects_lock(self, *, shared: bool):
        """Shared by writers of objects, exclusive for pruning, so a prune never
        removes a blob that an ingest in progress is about to reference."""
        return self._lock("objects", shared=shared)

    # -- reading refs -------------------------------------------------------

    def get(self, tag: str | tags.Tag) -> ModelInfo:
        """The model stored under ``tag``; ``name`` and ``name:latest`` mean the newest version."""
        t = tags.parse(tag)
        if t.is_latest:
            return self._latest(t.name)
        try:
            data = _read_small(f"{self._refs}/{t.name}/{t.version}")
        except FileNotFoundError:
            raise self._not_found(str(t)) from None
        return refs.decode(data, name=t.name, version=t.version)

    def _not_found(self, tag: str) -> NotFound:
        return NotFound(
            f"model {tag} is not in the cache at {self.root}; store it with "
            f"'cas add PATH {tag.split(':')[0]}' or set CAS_REMOTE to pull it from a repository"
        )

    def _versions(self, name: str) -> list[ModelInfo]:
        d = f"{self._refs}/{name}"
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for version in names:
            if version.startswith("."):
                continue
            try:
                out.append(refs.decode(_read_small(f"{d}/{version}"), name=name, version=version))
            except FileNotFoundError:  # deleted while we listed
                continue
        return out

    def _latest(self, name: str) -> ModelInfo:
        # Fast path: refs/<name>/.latest is a symlink to the newest ref. It is
        # only a hint: written before a new ref and fixed after a delete, so a
        # crash leaves it dangling at worst, and then the versions are scanned.
        try:
            return refs.decode(_read_small(f"{self._refs}/{name}/{LATEST_LINK}"), name=name)
        except (FileNotFoundError, CasError):
            pass
        newest = self._newest(name)
        if newest is None:
            raise self._not_found(f"{name}:latest")
        return newest

    def _newest(self, name: str) -> ModelInfo | None:
        versions = self._versions(name)
        return max(versions, key=_recency) if versions else None

    def _point_latest(self, name: str, info: ModelInfo | None) -> None:
        """Point refs/<name>/.latest at ``info`` (None: remove it). Caller holds the name's lock."""
        link = Path(self._refs, name, LATEST_LINK)
        if info is None:
            link.unlink(missing_ok=True)
            return
        make_dirs(link.parent)
        tmp = link.with_name(temp_name(".latest-"))
        os.symlink(info.version, tmp)
        os.replace(tmp, link)

    def list(self, name: str | None = None) -> list[ModelInfo]:
        """Stored models, newest first; only versions of ``name`` when given."""
        if name is not None:
            names = [tags.validate_name(name)]
        else:
            try:
                names = sorted(n for n in os.listdir(self.root / "refs") if not n.startswith("."))
            except FileNotFoundError:
                names = []
        infos = [i for n in names for i in self._versions(n)]
        return sorted(infos, key=_recency, reverse=True)

    def tree(self, tag: str | ModelInfo) -> Tree:
        """The tree manifest of a stored model."""
        info = tag if isinstance(tag, ModelInfo) else self.get(tag)
        try:
            data = self._tree_path(info.root).read_bytes()
        except FileNotFoundError:
            raise CorruptObject(
                f"tree {info.root} of {info.tag} is missing from {self.root}; run 'cas verify' and add the model again"
            ) from None
        return decode_tree(data, bytes.fromhex(info.root))

    # -- storing models -----------------------------------------------------

    def add(
        self,
        path: str | os.PathLike[str],
        tag: str,
        *,
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> ModelInfo:
        """Copy a directory (or one file) into the cache under ``tag`` (``name`` or ``name:version``).

        The user's files are copied, never moved or linked, so later edits to
        them cannot reach the cache. ``progress`` is called with byte counts.
        """
        name, version = self._new_tag(tag)
        labels, metadata = refs.check_labels(labels), refs.check_metadata(metadata)
        sources = _scan(Path(path))
        with self._objects_lock(shared=True):
            entries = [self._ingest_copy(s, progress) for s in sources]
            return self._record(name, version, entries, labels, metadata)

    @contextlib.contextmanager
    def create(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Iterator[Staging]:
        """Write a new model in place: yields a staging directory inside the cache.

        On normal exit the files are moved (not copied) into the cache under a
        new version; on an exception nothing is recorded and staging is removed.
        """
        name, version = self._new_tag(name)
        labels, metadata = refs.check_labels(labels), refs.check_metadata(metadata)
        staging = self._tmp / temp_name("create-")
        make_dirs(staging)
        try:
            yield Staging(staging, f"{name}:{version}")
            sources = _scan(staging)
            with self._objects_lock(shared=True):
                entries = [self._ingest_move(s) for s in sources]
                self._record(name, version, entries, labels, metadata)
        finally:
            remove_tree(staging)

    def _new_tag(self, tag: str) -> tuple[str, str]:
        name, version = tags.split(tag)
        if version is None:
            return name, tags.new_version()
        return name, tags.validate_version(version, whole=tag)

    def _ingest_copy(self, s: _Source, progress: Progress | None) -> FileEntry:
        make_dirs(self._tmp)
        tmp = self._tmp / temp_name("blob-")
        try:
            d = digest_file(s.src, copy_to=tmp, progress=progress, fsync=self.durable)
            self._store_blob(tmp, d.file_id, s.executable)
        finally:
            tmp.unlink(missing_ok=True)
        return FileEntry(s.path, d.size, s.executable, d.file_id, d.chunks)

    def _ingest_move(self, s: _Source) -> FileEntry:
        d = digest_file(s.src)
        if self.durable:
            fsync_path(s.src)
        self._store_blob(Path(s.src), d.file_id, s.executable)
        return FileEntry(s.path, d.size, s.executable, d.file_id, d.chunks)

    def _store_blob(self, tmp: Path, file_id: bytes, executable: bool) -> None:
        """Publish ``tmp`` as the blob for ``file_id`` unless that blob exists already."""
        dest = self._blob_path(file_id, executable)
        if dest.exists():
            return
        os.chmod(tmp, 0o555 if executable else 0o444)
        publish(tmp, dest)

    def _record(
        self, name: str, version: str, entries: list[FileEntry], labels: dict[str, str], metadata: dict[str, Any]
    ) -> ModelInfo:
        tree = Tree.build(entries)
        encoded = tree.encode()
        info = ModelInfo(
            name=name,
            version=version,
            root=hex_id(root_of(encoded)),
            created=time.time(),
            size=tree.size,
            file_count=len(tree.files),
            labels=labels,
            metadata=metadata,
        )
        return self._commit(info, tree, encoded)

    def _commit(self, info: ModelInfo, tree: Tree, encoded: bytes) -> ModelInfo:
        """Store the tree, index its chunks, then write the ref: the ref is the commit point."""
        tree_path = self._tree_path(info.root)
        if not tree_path.exists():
            write_new(tree_path, encoded, self._tmp)
        self._chunk_index().add_tree(tree)
        name, version = info.name, info.version
        ref_path = self._ref_path(name, version)
        with self._lock(f"ref-{name}"):
            if ref_path.exists():
                existing = refs.decode(ref_path.read_bytes(), name=name, version=version)
                if existing.root == info.root:
                    return existing
                raise InvalidInput(
                    f"model {name}:{version} already exists with other content (root {existing.root[:12]}); "
                    f"store under a new version, or remove it first with 'cas rm {name}:{version}'"
                )
            newest = self._newest(name)
            if newest is None or _recency(info) > _recency(newest):
                self._point_latest(name, info)  # before the ref: a crash in between leaves it dangling
            atomic_write(ref_path, info.encode(), self._tmp)
        return info

    def _chunk_index(self):
        """The on-disk chunk index (sqlite, opened on first use: the warm path never needs it)."""
        if self._chunks is None:
            from .chunkindex import ChunkIndex

            self._chunks = ChunkIndex(self.root / "chunks.sqlite")
        return self._chunks

    # -- repositories -------------------------------------------------------

    def push(self, tag: str, remote: str | None = None, *, progress: Progress | None = None) -> ModelInfo:
        """Upload a stored model to a repository (``$CAS_REMOTE`` by default), only what it lacks."""
        from .sync import push

        return push(self, tag, remote, progress=progress).info

    async def apush(self, tag: str, remote: str | None = None, *, progress: Progress | None = None) -> ModelInfo:
        """``push`` for async code: the upload runs on a loop of its own, so the caller's loop keeps serving."""
        from .sync import apush

        return (await apush(self, tag, remote, progress=progress)).info

    def pull(
        self, tag: str, remote: str | None = None, *, concurrency: int = 16, progress: Progress | None = None
    ) -> ModelInfo:
        """Fetch a model from a repository (``$CAS_REMOTE`` by default), moving only what no local file holds."""
        from .sync import pull

        with self._writing(tag, f"'cas pull {tag}'"):
            return pull(self, tag, remote, concurrency=concurrency, progress=progress).info

    async def apull(
        self, tag: str, remote: str | None = None, *, concurrency: int = 16, progress: Progress | None = None
    ) -> ModelInfo:
        """``pull`` for async code: the pull runs on a loop of its own, so the caller's loop keeps serving;
        cancelling the awaiting task stops it, keeping what it verified for the next pull."""
        from .sync import apull

        with self._writing(tag, f"'cas pull {tag}'"):
            return (await apull(self, tag, remote, concurrency=concurrency, progress=progress)).info

    # -- resolving: the policy the descriptor and services use -----------------

    def resolve(
        self, tag: str | tags.Tag, *, remote: str | None = None, refresh: bool = False, offline: bool | None = None
    ) -> ModelInfo:
        """The model to use for ``tag``: the local one when there is one (no network), else pulled.

        ``remote`` (default ``$CAS_REMOTE``) is pulled from when the tag is not here; ``refresh`` asks it for
        its newest version first and falls back to the local one, with a warning, when it cannot be reached;
        ``offline`` (default ``$CAS_OFFLINE``) never touches the network.  Processes of this host resolving
        one missing tag at once all end with the same version.  Works from any thread, loop or not.
        """
        t = tags.parse(tag)
        if not refresh:
            try:
                return self.get(t)  # the warm path: nothing else is read
            except NotFound:
                pass
        url = self._pull_from(t, remote, refresh, offline)
        if not url:
            return self.get(t)
        from . import privateloop

        return privateloop.run(lambda: self._resolve_remotely(t, url, refresh))

    async def aresolve(
        self, tag: str | tags.Tag, *, remote: str | None = None, refresh: bool = False, offline: bool | None = None
    ) -> ModelInfo:
        """``resolve`` for async code: a pull runs on a loop of its own, and the task can be cancelled."""
        import asyncio

        from . import privateloop

        t = tags.parse(tag)
        if not refresh:
            try:
                return await asyncio.to_thread(self.get, t)
            except NotFound:
                pass
        url = self._pull_from(t, remote, refresh, offline)
        if not url:
            return await asyncio.to_thread(self.get, t)
        return await privateloop.run_async(lambda: self._resolve_remotely(t, url, refresh))

    def _pull_from(self, t: tags.Tag, remote: str | None, refresh: bool, offline: bool | None) -> str:
        """The repository to pull ``t`` from, or "" to use the local version (a refresh with no repository
        to ask); a model that is not here and cannot be pulled is a NotFound saying why."""
        url = remote or os.environ.get("CAS_REMOTE") or ""
        why_offline = "offline=True" if offline else ""
        if offline is None and os.environ.get("CAS_OFFLINE", "") not in ("", "0"):
            why_offline = "CAS_OFFLINE is set"
        if url and not why_offline:
            return url
        if refresh:
            return ""
        if why_offline:
            raise NotFound(f"{self._not_found(str(t))} ({why_offline}, so it was not pulled)")
        raise self._not_found(str(t))

    async def _resolve_remotely(self, tag: str | tags.Tag, url: str, refresh: bool) -> ModelInfo:
        """Pull ``tag`` on the running (private) loop, one process of this host at a time per name;
        a refresh that cannot pull (repository down, cache read-only or busy) falls back to the local version."""
        from .sync import pull_here

        t = tags.parse(tag)
        try:
            with self._writing(str(t), f"'cas pull {t}'"):
                async with self._alock(f"resolve-{t.name}"):
                    if not refresh:
                        with contextlib.suppress(NotFound):
                            return self.get(t)  # pulled by another process while this one waited
                    return (await pull_here(self, str(t), url)).info
        except CasError as e:
            if refresh:
                return self._refresh_failed(t, url, e)
            if isinstance(e, (NotFound, CacheNotWritable)):
                raise
            raise type(e)(f"could not pull {t} from {url}: {e}") from None

    def _refresh_failed(self, t: tags.Tag, url: str, error: CasError) -> ModelInfo:
        try:
            info = self.get(t)
        except NotFound:
            raise type(error)(f"could not pull {t} from {url}: {error}") from None
        warnings.warn(f"cas: could not refresh {t} from {url} ({error}); using {info.tag}", stacklevel=2)
        return info

    @contextlib.contextmanager
    def _writing(self, tag: str, remedy: str) -> Iterator[None]:
        """Turn a refused write inside this cache (a read-only volume, another user's files) into one clear
        error; a refused access elsewhere (a repository folder) is not the cache's."""
        try:
            yield
        except OSError as e:
            if isinstance(e, CasError) or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            if not os.path.abspath(os.fspath(e.filename or "")).startswith(self._root + os.sep):
                raise
            raise CacheNotWritable(
                f"the cache at {self.root} is not writable by this process: {e.strerror} ({e.filename}); {tag} "
                f"needs a write there: run {remedy} as the cache's owner when provisioning, or use a cache this "
                "user can write (CAS_HOME, or cache= in Python)"
            ) from None

    def _publish_pulled(self, part: Path, file_id: bytes, executable: bool) -> None:
        """Turn a verified, assembled file into a blob."""
        if self.durable:
            fsync_path(part)
        self._store_blob(part, file_id, executable)
        part.unlink(missing_ok=True)

    # -- deleting -----------------------------------------------------------

    def delete(self, tag: str) -> list[ModelInfo]:
        """Remove ``name:version`` (``name:latest``: the newest; bare ``name``: every version).

        Trees, blobs and snapshots no other ref uses are removed with it.
        """
        if ":" in str(tag):
            victims = [self.get(tag)]
        else:
            victims = self.list(tags.validate_name(tag))
            if not victims:
                raise self._not_found(tag)
        with self._objects_lock(shared=False):
            for name in sorted({i.name for i in victims}):
                with self._lock(f"ref-{name}"):
                    for info in victims:
                        if info.name == name:
                            self._ref_path(name, info.version).unlink(missing_ok=True)
                    newest = self._newest(name)  # after the unlink: a crash in between leaves it dangling
                    self._point_latest(name, newest)
                    if newest is None:
                        with contextlib.suppress(OSError):
                            os.rmdir(Path(self._refs, name))
            self._prune({i.root for i in victims})
        return victims

    def _live_roots(self) -> set[str]:
        return {i.root for i in self.list()}

    def _prune(self, candidates: set[str]) -> list[str]:
        """Remove the trees, snapshots and blobs of ``candidates`` that no ref still uses."""
        live = self._live_roots()
        dead = candidates - live
        if not dead:
            return []
        keep: set[Path] = set()
        for root in live:
            with contextlib.suppress(CasError):
                keep.update(self._blob_paths(self._load_tree(root)))
        removed = []
        for root in dead:
            with leases.unused(str(self.root / "locks"), root) as free:
                if free:  # in use: the snapshot stays for a later `cas verify`; its hardlinks keep its bytes
                    remove_tree(self.snapshot_path(root))
            with contextlib.suppress(CasError):
                for blob in self._blob_paths(self._load_tree(root)) - keep:
                    blob.unlink(missing_ok=True)
                    removed.append(str(blob))
            self._tree_path(root).unlink(missing_ok=True)
            removed.append(str(self._tree_path(root)))
        return removed

    def _load_tree(self, root: str) -> Tree:
        try:
            data = self._tree_path(root).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"tree {root} is missing") from None
        return decode_tree(data, bytes.fromhex(root))

    def _blob_paths(self, tree: Tree) -> set[Path]:
        return {self._blob_path(f.file_id, f.executable) for f in tree.files}

    # -- materializing ------------------------------------------------------

    def materialize(self, tag: str | ModelInfo) -> Path:
        """The model's read-only snapshot directory, built from hardlinks on first use."""
        return Path(self.snapshot_dir(tag if isinstance(tag, ModelInfo) else self.get(tag)))

    def lease(self, info: ModelInfo) -> None:
        """Keep ``cas rm`` from deleting this model's snapshot while this process lives (see ``cas.leases``).

        Taken before ``snapshot_dir``: a removal that finished first leaves no ref,
        which ``snapshot_dir`` reports instead of rebuilding from what is left."""
        leases.hold(f"{self._root}/locks", info.root)

    def snapshot_dir(self, info: ModelInfo) -> str:
        """``materialize`` as a plain string: the descriptor's warm path is one ``stat``."""
        snap = f"{self._snaps}/{info.root}"
        if os.path.isdir(snap):
            return snap
        with self._writing(info.tag, f"'cas materialize {info.tag}'"), self._lock(f"snapshot-{info.root}"), \
                self._objects_lock(shared=True):  # fmt: skip
            if not os.path.isdir(snap):
                if not self._ref_path(info.name, info.version).exists():
                    raise NotFound(f"model {info.tag} was removed while it was being resolved; store or pull it again")
                self._build_snapshot(info, Path(snap))
        return snap

    def _build_snapshot(self, info: ModelInfo, snap: Path) -> None:
        tree = self.tree(info)
        stage = self._snapshots / temp_name(".tmp-")
        make_dirs(stage)
        try:
            dirs = {stage}
            for f in tree.files:
                blob = self._blob_path(f.file_id, f.executable)
                if not blob.exists():
                    raise CorruptObject(
                        f"{info.tag}: blob {blob.name} for {f.path!r} is missing from {self.root}; "
                        f"run 'cas verify' and add or pull {info.tag} again"
                    )
                dest = stage / f.path
                if dest.parent not in dirs:
                    make_dirs(dest.parent)
                    dirs.update(dest.parents)
                link_or_copy(blob, dest)
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                if d.is_relative_to(stage):
                    os.chmod(d, 0o555)
            os.rename(stage, snap)
        except OSError as e:
            remove_tree(stage)
            if os.path.isdir(snap):  # another process without our lock won the race
                return
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # said as "not writable" by snapshot_dir
            raise CasError(f"could not materialize {info.tag} in {self._snapshots}: {e}") from e
        except BaseException:
            remove_tree(stage)
            raise
        fsync_dir(self._snapshots)

    # -- verifying ----------------------------------------------------------

    def verify(self, tag: str | None = None, *, repair: bool = True) -> VerifyReport:
        """Re-hash blobs and snapshots; report damage and repair what can be repaired here.

        Repairs: a snapshot with an edited, missing or extra file is rebuilt
        from good blobs; a blob whose bytes no longer match its id is removed
        (with any snapshot sharing it) so it can never be served; with no
        ``tag``, orphaned trees, blobs, snapshots and dead temporaries are removed.
        """
        return verify_cache(self, tag, repair=repair)


LATEST_LINK = ".latest"


def _recency(info: ModelInfo) -> tuple[float, str]:
    """Newest first means the latest creation time; equal times fall back to the version."""
    return (info.created, info.version)


def _read_small(path: str) -> bytes:
    """Read a ref record with few system calls and no large buffer (it is on the warm path)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
        if len(data) < 4096:
            return data
        parts = [data]
        while (data := os.read(fd, 1 << 16)) and sum(map(len, parts)) <= refs.MAX_REF_BYTES:
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _scan(path: Path) -> list[_Source]:
    """The regular files to ingest under ``path``, following symlinks to files.

    Raises a clear error for a missing path, an empty directory, a dangling
    symlink, a symlink loop, a special file or a file name that is not UTF-8.
    """
    if not os.path.lexists(path):
        raise InvalidInput(f"{path} does not exist; give a directory or a file to store")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidInput(f"{path} cannot be read: {_why(e)}") from None
    if stat.S_ISREG(st.st_mode):
        return [_source(os.path.basename(os.path.abspath(path)), os.path.abspath(path), st)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is neither a regular file nor a directory")
    base = os.path.abspath(path)
    out: list[_Source] = []
    seen_dirs = {(st.st_dev, st.st_ino)}

    def walk(rel: str) -> None:
        here = os.path.join(base, rel) if rel else base
        try:
            names = sorted(os.listdir(here))
        except OSError as e:
            raise InvalidInput(f"cannot list {here}: {_why(e)}") from None
        for n in names:
            full = os.path.join(here, n)
            relpath = f"{rel}/{n}" if rel else n
            try:
                st = os.stat(full)
            except FileNotFoundError:
                raise InvalidInput(f"{full} is a dangling symlink; fix or remove it and try again") from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise InvalidInput(f"{full} is a symlink loop; fix or remove it and try again") from None
                raise InvalidInput(f"{full} cannot be read: {_why(e)}") from None
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    raise InvalidInput(f"{full} is a symlink loop (it leads back to a directory already included)")
                seen_dirs.add(key)
                walk(relpath)
                seen_dirs.discard(key)
            elif stat.S_ISREG(st.st_mode):
                out.append(_source(relpath, full, st))
            else:
                raise InvalidInput(f"{full} is not a regular file (a socket, pipe or device); remove it and try again")

    walk("")
    if not out:
        raise InvalidInput(f"{path} contains no files; there is nothing to store")
    return out


def _source(relpath: str, full: str, st: os.stat_result) -> _Source:
    try:
        check_path(relpath)
    except CasError as e:
        raise InvalidInput(f"{full}: cannot be stored ({e})") from None
    return _Source(relpath, full, bool(st.st_mode & 0o111))


def _why(e: OSError) -> str:
    return e.strerror or str(e)
