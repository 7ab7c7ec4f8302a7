"""The local cache of one host, composed of its parts: objects, refs, snapshots and the chunk index.

Layout under the cache root::

    refs/<name>/<version>     ref records (``refs``)
    trees/<ab>/<root>         tree manifests (``objects``)
    blobs/<ab>/<file id>      whole files, mode 0444 (``objects``)
    snapshots/<root>/         a model's files as hardlinks to blobs (``snapshots``)
    chunks.sqlite             which blob holds each chunk (``chunkindex``)
    tmp/, locks/              staging on the same filesystem; lock files

Writes go bottom-up: blobs, then the tree, then the ref, which is the
commit point; a reader starts from the ref.  ``LocalCache`` knows nothing of
repositories: ``cas.Cache`` adds pull, push and the resolution policy.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..content import ref, tags
from ..content.ref import ModelInfo, recency
from ..content.selection import Selection
from ..errors import CacheBusy, CorruptObject, InvalidInput, InvalidManifest, NotFound
from ..system.dirs import make_dirs, remove_tree
from ..system.names import temp_name
from . import owners, settings
from .locks import Locks
from .objects import ObjectStore
from .refs import Refs
from .snapshots import Snapshots
from .storing import Staging, check_created, ingest, new_tag, version_of
from .writable import writing

TYPE_CHECKING = False  # typing costs 2 ms to import, which every service would pay on start
if TYPE_CHECKING:  # imported where used: a service's warm path needs none of them
    from typing import Any, TypeAlias

    from ..content.tree import FileEntry, Tree
    from ..trust.policy import TrustPolicy
    from .checkout import CheckoutReport, CheckoutStatus
    from .chunkindex import ChunkIndex
    from .gc import GcReport
    from .space import SpaceReport
    from .trusted import KnownPolicy, TrustedState
    from .verify import VerifyReport

    Patterns: TypeAlias = Iterable[str] | str | None  # gitignore-style patterns (``cas.content.selection``)

Progress = Callable[[int], None]  # called with byte counts as work is done


def default_root() -> Path:
    """``$CAS_HOME``, else ``$XDG_CACHE_HOME/cas``, else ``~/.cache/cas``."""
    return Path(settings.default_root())


class LocalCache:
    """A content-addressed model cache rooted at one directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, durable: bool | None = None,
                 max_size: int | str | None = None,
                 trust: str | os.PathLike[str] | TrustPolicy | None = None):  # fmt: skip
        """``durable`` (default: true unless ``CAS_DURABLE=0``) fsyncs every blob before it is
        published, so a power loss can never leave a blob whose bytes do not match its name;
        turn it off for throwaway caches, where it roughly halves ``add`` time.  ``max_size``
        (default ``$CAS_MAX_SIZE``; bytes or ``"20G"``) is the budget gc keeps the cache to after
        each pull, evicting least recently used versions that can be pulled again.  ``trust`` (default
        ``$CAS_TRUST``; a policy file or a ``TrustPolicy``): only models signed by keys it trusts are pulled,
        resolved or materialized (see ``cas.trust``)."""
        self.settings = settings.Settings(durable, max_size, trust)
        self._chunks: ChunkIndex | None = None
        self._chunks_pid = 0  # the process that opened it
        self._root = os.path.abspath(
            os.path.expanduser(os.fspath(root) if root is not None else settings.default_root())
        )
        self.locks = Locks(self._root + "/locks")
        self.objects = ObjectStore(self._root)
        self.refs = Refs(self._root, self.locks)
        self.snapshots = Snapshots(self._root, self.objects)
        self._trusted: TrustedState | None = None

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def durable(self) -> bool:
        return self.settings.durable()  # read when first writing: the warm path never needs it

    @property
    def max_size(self) -> int | None:
        """The size budget in bytes (``max_size=``, else ``$CAS_MAX_SIZE``), or None for no budget."""
        return self.settings.max_size()

    @property
    def trusted(self) -> TrustedState:
        """What this host verified under its trust policies (imported only by hosts that have one)."""
        if self._trusted is None:
            from .trusted import TrustedState

            self._trusted = TrustedState(self._root, self.durable)
        return self._trusted

    def trust_policy(self, override: str | os.PathLike[str] | TrustPolicy | None = None) -> TrustPolicy | None:
        """The policy in force: ``override``, else the cache's ``trust``, else ``$CAS_TRUST``'s (read once)."""
        return self.settings.policy(override)

    def known_policy(self, override: str | os.PathLike[str] | TrustPolicy | None = None
                     ) -> TrustPolicy | KnownPolicy | None:  # fmt: skip
        """The policy in force as a warm path needs it (see ``settings``)."""
        return self.settings.known(override, lambda: self.trusted)

    def check_trusted(self, info: ModelInfo, policy: TrustPolicy | KnownPolicy | None) -> ModelInfo:
        """``info`` if ``policy`` allows it (no policy allows all), else ``Untrusted`` saying what to do."""
        return info if policy is None else self.trusted.check(policy, info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._root!r})"

    def __getstate__(self) -> dict[str, Any]:
        """A cache travels (pickle, cloudpickle) as its root: the open chunk index stays behind."""
        given = self.settings
        return {
            "root": self._root,
            "durable": given.given_durable,
            "max_size": given.given_max_size,
            "trust": given.trust,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], durable=state["durable"], max_size=state.get("max_size"),  # type: ignore[misc]
                      trust=state.get("trust"))  # fmt: skip

    def chunk_index(self) -> ChunkIndex:
        """The on-disk chunk index (sqlite, opened on first use: the warm path never needs it)."""
        if self._chunks is None or self._chunks_pid != os.getpid():  # a forked child opens its own (chunkindex)
            from .chunkindex import ChunkIndex

            self._chunks = ChunkIndex(self.root / "chunks.sqlite")
            self._chunks_pid = os.getpid()
        return self._chunks

    def _existing_chunk_index(self) -> ChunkIndex | None:
        """The chunk index if this cache has one (gc prunes it, and has no reason to make one)."""
        return self.chunk_index() if self._chunks is not None or (self.root / "chunks.sqlite").exists() else None

    def writing(self, tag: str, remedy: str) -> contextlib.AbstractContextManager[None]:
        """A refused write inside this cache as one clear error naming ``remedy`` (see ``writable``)."""
        return writing(self._root, tag, remedy)

    # -- reading ----------------------------------------------------------------

    def get(self, tag: str | tags.Tag) -> ModelInfo:
        """The model stored under ``tag``; ``name`` and ``name:latest`` mean the newest version."""
        return self.refs.get(tags.parse(tag))

    def whole(self, tag: str | tags.Tag, doing: str) -> ModelInfo:
        """The model stored under ``tag``, refused in one line when only some of its files are here
        (a repository or an export file always holds whole versions)."""
        info = self.get(tag)
        if info.partial:
            here = len(self.files_here(info, self.tree(info)))
            raise InvalidInput(f"{info.tag} is partial in the cache at {self.root} ({here} of {info.file_count} "
                               f"files here), and {doing} needs all of them: pull the rest first with "
                               f"'cas pull {info.tag}'")  # fmt: skip
        return info

    def list(self, name: str | None = None) -> list[ModelInfo]:
        """Stored models, newest first; only versions of ``name`` when given."""
        names = [tags.validate_name(name)] if name is not None else self.refs.names()
        return sorted((i for n in names for i in self.refs.versions(n)), key=recency, reverse=True)

    def tree(self, tag: str | ModelInfo) -> Tree:
        """The tree manifest of a stored model."""
        info = tag if isinstance(tag, ModelInfo) else self.get(tag)
        try:
            return self.objects.load_tree(info.root)
        except NotFound:
            raise CorruptObject(
                f"tree {info.root} of {info.tag} is missing from {self.root}; run 'cas verify' and add the model again"
            ) from None
        except InvalidManifest as e:
            raise CorruptObject(f"tree {info.root} of {info.tag} in {self.root} is damaged ({e}); run 'cas verify' "
                                "and add or pull the model again") from None  # fmt: skip

    # -- storing ----------------------------------------------------------------

    def add(self, path: str | os.PathLike[str], tag: str, *, labels: dict[str, str] | None = None,
            metadata: dict[str, Any] | None = None, progress: Progress | None = None,
            created: float | None = None) -> ModelInfo:  # fmt: skip
        """Copy a directory (or one file) into the cache under ``tag`` (``name`` or ``name:version``).

        The user's files are copied, never moved or linked, so later edits to
        them cannot reach the cache. ``progress`` is called with byte counts;
        ``created`` (seconds since the epoch, default now) keeps the creation
        time of a model moved in from another store.
        """
        from .sources import scan

        name, version = new_tag(tag)
        labels, metadata = ref.check_labels(labels), ref.check_metadata(metadata)
        created = check_created(created) if created is not None else None
        sources = scan(Path(path))
        with self.writing(f"storing {name}:{version}", "'cas add'"), self.locks.hold("objects", shared=True):
            entries = ingest(self.objects, sources, progress, move=False, durable=self.durable)
            return self.commit(*version_of(name, version, entries, labels, metadata, created))

    @contextlib.contextmanager
    def create(self, name: str, *, labels: dict[str, str] | None = None,
               metadata: dict[str, Any] | None = None) -> Iterator[Staging]:  # fmt: skip
        """Write a new model in place: yields a staging directory inside the cache.

        On normal exit the files are moved (not copied) into the cache under a
        new version; on an exception nothing is recorded and staging is removed.
        A symlink (or a file reached through one, or hardlinked from elsewhere)
        is the user's own file: its bytes are copied, the file is left as it is.
        """
        from .sources import scan

        name, version = new_tag(name)
        labels, metadata = ref.check_labels(labels), ref.check_metadata(metadata)
        owners.claim(self.locks.dir)  # the staging folder lives as long as this process: gc must see it alive
        staging = self.objects.tmp / temp_name("create-")
        doing = f"storing {name}:{version}", "'cas add' or create()"
        with self.writing(*doing):
            make_dirs(staging)
        try:
            yield Staging(staging, f"{name}:{version}")
            sources = scan(staging)
            with self.writing(*doing), self.locks.hold("objects", shared=True):
                entries = ingest(self.objects, sources, None, move=True, durable=self.durable)
                self.commit(*version_of(name, version, entries, labels, metadata))
        finally:
            remove_tree(staging)

    def commit(self, info: ModelInfo, tree: Tree, encoded: bytes, remote: str | None = None) -> ModelInfo:
        """Record a model whose blobs are stored: the tree, its chunks in the index, then the ref (the commit
        point).  Returns the ref as stored: an existing one with the same content, else ``info``.
        ``remote``: the repository it came from, so gc may evict it (it can be pulled again)."""
        self.objects.store_tree(info.root, encoded)
        self.chunk_index().add_files(self.files_here(info, tree))
        return self.refs.create_if_absent(info, remote)

    def files_here(self, info: ModelInfo, tree: Tree) -> builtins.list[FileEntry]:
        """The files of a version this cache holds: all of them, or of a partial version those whose blob is here."""
        if not info.partial:
            return list(tree.files)
        return [f for f in tree.files if self.objects.has_blob(f.file_id, f.executable)]

    def covers(self, info: ModelInfo, selection: Selection | None) -> bool:
        """Whether the files ``selection`` takes (None: every file) are here; for a partial version that takes
        its tree and a ``stat`` per file, unless that selection's snapshot is built already."""
        if not info.partial:
            return True
        if selection is not None and self.snapshots.built(info.root, selection.key):
            return True
        tree = self.tree(info)
        files = selection.files(tree, info.tag) if selection is not None else tree.files
        return all(self.objects.has_blob(f.file_id, f.executable) for f in files)

    # -- removing ---------------------------------------------------------------

    def delete(self, tag: str) -> builtins.list[ModelInfo]:
        """Remove ``name:version`` (``name:latest``: the newest; bare ``name``: every version).

        Trees, blobs and snapshots no other ref uses are removed with it.
        """
        if ":" in str(tag):
            victims = [self.get(tag)]
        else:
            victims = self.list(tags.validate_name(tag))
            if not victims:
                raise self.refs.not_found(tag)
        from .leftovers import remove_unused

        with self.writing(f"removing {tag}", f"'cas rm {tag}'"), self.locks.hold("objects"):
            for name in sorted({i.name for i in victims}):
                self.refs.remove(name, [i.version for i in victims if i.name == name])
            remove_unused(self.objects, self.snapshots, {i.root for i in self.list()}, {i.root for i in victims})
        return victims

    # -- space ------------------------------------------------------------------

    def du(self, name: str | None = None) -> SpaceReport:
        """What each version (of ``name``, or all) takes on disk, what only it holds, and the totals."""
        from .space import space_report

        only = tags.validate_name(name) if name is not None else None
        try:
            leftover: int | None = self.gc(dry_run=True, wait=False).freed
        except CacheBusy:
            leftover = None  # an add or pull is writing: what is left over is not knowable now
        with self.locks.hold("objects", shared=True):
            return space_report(self.objects, self.refs, self.snapshots, only, leftover, self.files_here)

    def gc(self, max_size: int | str | None = None, *, dry_run: bool = False, keep: Iterable[ModelInfo] = (),
           wait: bool = True) -> GcReport:  # fmt: skip
        """Remove what no ref needs (orphaned objects and snapshots, files of dead processes and of
        interrupted pulls, stale chunk-index rows); with ``max_size`` (bytes or ``"20G"``), also evict least
        recently used versions that can be pulled again until the cache fits.  Never evicted: versions
        stored here only, those a running process uses, those in ``keep``.  ``dry_run`` changes nothing;
        ``wait=False`` raises CacheBusy at once while another process writes to the cache."""
        from .gc import Collector
        from .space import parse_size

        budget = parse_size(max_size, "max_size") if max_size is not None else None
        with self.writing("gc", "'cas gc'") if not dry_run else contextlib.nullcontext():
            collector = Collector(self.objects, self.refs, self.snapshots, self.locks, self._existing_chunk_index,
                                  dry_run=dry_run)  # fmt: skip
            return collector.run(budget, {i.root for i in keep}, wait)

    # -- materializing ----------------------------------------------------------

    def materialize(self, tag: str | ModelInfo, *, include: Patterns = None, exclude: Patterns = None) -> Path:
        """The model's read-only snapshot directory, built from hardlinks on first use (the warm path: one
        ``stat``); with ``include``/``exclude`` (gitignore-style patterns, see ``cas.content.selection``) a directory
        of just the files they select.  A tag is checked against the trust policy; a ``ModelInfo`` is
        taken as resolved."""
        info = tag if isinstance(tag, ModelInfo) else self.check_trusted(self.get(tag), self.trust_policy())
        sel = Selection.of(include, exclude)
        key = sel.key if sel is not None else None
        if not self.snapshots.built(info.root, key):
            self._build(info, sel)
        return self.snapshots.path(info.root, key)

    def lease(self, info: ModelInfo) -> None:
        """Keep ``cas rm`` from deleting this model's snapshots while this process lives (see ``leases``).

        Taken before ``materialize``: a removal that finished first leaves no ref,
        which ``materialize`` reports instead of rebuilding from what is left."""
        self.snapshots.lease(info.root)

    def _build(self, info: ModelInfo, sel: Selection | None) -> None:
        key = sel.key if sel is not None else None
        with self.writing(info.tag, f"'cas materialize {info.tag}'"), self.locks.hold(f"snapshot-{info.root}"), \
                self.locks.hold("objects", shared=True):  # fmt: skip
            if not self.snapshots.built(info.root, key):
                if not self.refs.exists(info):
                    raise NotFound(f"model {info.tag} was removed while it was being resolved; store or pull it again")
                tree = self.tree(info)
                files = sel.files(tree, info.tag) if sel is not None else list(tree.files)
                if self.refs.get(tags.parse(info.tag)).partial:  # a whole version's missing blob: linking reports it
                    self.objects.require_blobs(info.tag, files, sel)
                self.snapshots.build(info, files, sel)

    # -- checkouts: a version laid into a directory of the user's ---------------

    def checkout(self, tag: str | ModelInfo, dest: str | os.PathLike[str], *, include: Patterns = None,
                 exclude: Patterns = None, link: bool = False, force: bool = False) -> CheckoutReport:  # fmt: skip
        """Lay the model's files (those ``include``/``exclude`` select) into ``dest``: writable copies (reflinks
        where the filesystem clones), or with ``link`` read-only hardlinks to the cache's blobs.  Over an
        earlier checkout only what changed is written and what the version lacks is removed; a file the
        user changed is never overwritten or removed unless ``force``."""
        from .checkout import Checkout, destination

        info = tag if isinstance(tag, ModelInfo) else self.check_trusted(self.get(tag), self.trust_policy())
        sel = Selection.of(include, exclude)
        target = destination(dest, self.root)
        with self.locks.hold("objects", shared=True):  # gc removes no blob while it is copied
            tree = self.tree(info)
            files = sel.files(tree, info.tag) if sel is not None else list(tree.files)
            if self.refs.get(tags.parse(info.tag)).partial:  # a whole version's missing blob: linking reports it
                self.objects.require_blobs(info.tag, files, sel)
            return Checkout(self.objects, info, files, sel, target, link=link).run(force)

    def status(self, dest: str | os.PathLike[str], tag: str | None = None, *, include: Patterns = None,
               exclude: Patterns = None) -> CheckoutStatus:  # fmt: skip
        """How ``dest`` differs from the version last checked out there (or ``tag``): files changed, missing
        and not part of it.  The selection is the checkout's unless ``include``/``exclude`` are given."""
        from .checkout import compare

        info = self.get(tag) if tag is not None else None
        return compare(self.objects, dest, info, Selection.of(include, exclude))

    # -- verifying --------------------------------------------------------------

    def verify(self, tag: str | None = None, *, repair: bool = True) -> VerifyReport:
        """Re-hash blobs and snapshots; report damage and repair what can be repaired here.

        Repairs: a snapshot with an edited, missing or extra file is rebuilt
        from good blobs; a blob whose bytes no longer match its id is removed
        (with any snapshot sharing it) so it can never be served; with no
        ``tag``, orphaned trees, blobs, snapshots and dead temporaries are removed.
        """
        from .verify import Verifier

        verifier = Verifier(self.objects, self.refs, self.snapshots, self.locks, repair=repair)
        if not repair:
            return verifier.run(tag)
        with self.writing("verify (repairing; 'cas verify --no-repair' only checks)", "'cas verify'"):
            return verifier.run(tag)
