"""``cas.Cache``: the local cache with its repositories, and the policy that resolves a tag for a service.

``LocalCache`` (``cas.local``) knows one host's files; this adds pull and
push (``cas.sync.pull``, ``cas.sync.push``, imported only when a repository is used) and
``resolve``, the policy the descriptor and the CLI share: the local version
when there is one, else pulled; ``refresh`` asks the repository first;
offline never asks.  Every blocking call works from any thread, event loop
or not; the ``a...`` variants are for async code.
"""

from __future__ import annotations

import contextlib
import os

from .content import tags
from .content.ref import ModelInfo
from .content.selection import Selection
from .errors import CacheBusy, CacheNotWritable, CasError, NotFound, OutOfSpace, Untrusted
from .local.cache import LocalCache, Progress
from .repo import CONCURRENCY
from .system.envflags import env_flag

TYPE_CHECKING = False  # typing costs 2 ms to import, which every service would pay on start
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .local.checkout import CheckoutReport
    from .local.trusted import KnownPolicy
    from .sync.archive import ArchiveStats
    from .sync.exportfile import Source
    from .sync.pull import PullEstimate, PullStats
    from .sync.push import PushStats
    from .trust.keys import Signer
    from .trust.policy import TrustPolicy

    TrustSpec = str | os.PathLike[str] | TrustPolicy | None
    from .local.cache import Patterns

    Seeds = Sequence[str | os.PathLike[str]] | None


class Cache(LocalCache):
    """A content-addressed model cache rooted at one directory, and its way to repositories."""

    # -- repositories -----------------------------------------------------------

    def push(self, tag: str, remote: str | None = None, *, progress: Progress | None = None,
             sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
        """Upload a stored model to a repository (``$CAS_REMOTE`` by default), only what it lacks; ``sign``:
        keys (``cas.SigningKey`` or any signer) that sign it there as its name's newest version."""
        from .sync.push import push

        return push(self, tag, remote, progress=progress, sign=sign)

    async def apush(self, tag: str, remote: str | None = None, *, progress: Progress | None = None,
                    sign: Sequence[Signer] = ()) -> PushStats:  # fmt: skip
        """``push`` for async code: the upload runs on a loop of its own, so the caller's loop keeps serving."""
        from .sync.push import apush

        return await apush(self, tag, remote, progress=progress, sign=sign)

    def pull(self, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
             progress: Progress | None = None, trust: TrustSpec = None, include: Patterns = None,
             exclude: Patterns = None, seeds: Seeds = None) -> PullStats:  # fmt: skip
        """Fetch a model from a repository (``$CAS_REMOTE`` by default), moving only what no local file holds;
        ``concurrency`` range requests in flight, ``progress`` called with byte counts; ``trust``: the policy
        that must vouch for it (default: the cache's, else ``$CAS_TRUST``'s); ``include``/``exclude``:
        gitignore-style patterns choosing the files to pull (the version is then partial here); ``seeds``:
        folders whose files may hold chunks of it (default ``$CAS_SEEDS``), each chunk verified."""
        from .sync.pull import pull

        with self.writing(tag, f"'cas pull {tag}'"):
            stats = pull(self, tag, remote, concurrency=concurrency, progress=progress,
                         trust=self.trust_policy(trust), selection=Selection.of(include, exclude),
                         seeds=_seed_dirs(seeds))  # fmt: skip
        return stats.with_evicted(self._fit_budget(stats.info))

    def estimate_pull(self, tag: str, remote: str | None = None, *, include: Patterns = None,
                      exclude: Patterns = None) -> PullEstimate:  # fmt: skip
        """What ``pull`` would fetch and reuse, without fetching (three small documents are read)."""
        from .sync.pull import estimate

        return estimate(self, tag, remote, Selection.of(include, exclude))

    async def apull(self, tag: str, remote: str | None = None, *, concurrency: int = CONCURRENCY,
                    progress: Progress | None = None, trust: TrustSpec = None, include: Patterns = None,
                    exclude: Patterns = None, seeds: Seeds = None) -> PullStats:  # fmt: skip
        """``pull`` for async code: the pull runs on a loop of its own, so the caller's loop keeps serving;
        cancelling the awaiting task stops it, keeping what it verified for the next pull."""
        from .sync.pull import apull

        with self.writing(tag, f"'cas pull {tag}'"):
            stats = await apull(self, tag, remote, concurrency=concurrency, progress=progress,
                                trust=self.trust_policy(trust), selection=Selection.of(include, exclude),
                                seeds=_seed_dirs(seeds))  # fmt: skip
        import asyncio

        return stats.with_evicted(await asyncio.to_thread(self._fit_budget, stats.info))

    def _fit_budget(self, pulled: ModelInfo) -> tuple[str, ...]:
        """After a pull, gc to the size budget (``max_size``, ``$CAS_MAX_SIZE``), keeping what was pulled;
        skipped while another process writes (its own pull gcs after it), never failing the pull.  Returns the
        tags evicted."""
        budget = self.max_size
        if budget is None:
            return ()
        try:
            report = self.gc(budget, keep=[pulled], wait=False)
        except CacheBusy:
            return ()
        except (CasError, OSError) as e:
            import warnings

            warnings.warn(f"cas: could not keep the cache at {self.root} to its size budget: {e}", stacklevel=3)
            return ()
        if report.over_budget:
            kept = "; ".join(f"{k.tag}: {k.reason}" for k in report.kept[:5]) or "nothing else can be evicted"
            import warnings

            from .local.space import format_size

            warnings.warn(f"cas: the cache at {self.root} takes {format_size(report.size_after)}, over its budget of "
                          f"{format_size(budget)} ({kept})", stacklevel=3)  # fmt: skip
        return tuple(i.tag for i in report.evicted)

    # -- checkouts --------------------------------------------------------------

    def checkout(self, tag: str | ModelInfo, dest: str | os.PathLike[str], *, include: Patterns = None,
                 exclude: Patterns = None, link: bool = False, force: bool = False,
                 remote: str | None = None) -> CheckoutReport:  # fmt: skip
        """Lay a version (or the files ``include``/``exclude`` select) into ``dest``, pulling what is not here
        (as ``resolve`` does): writable copies, or read-only hardlinks with ``link``; see ``LocalCache.checkout``."""
        info = tag if isinstance(tag, ModelInfo) else self.resolve(tag, remote=remote, include=include, exclude=exclude)
        return super().checkout(info, dest, include=include, exclude=exclude, link=link, force=force)

    # -- export files: a model carried without a repository ---------------------

    def export_model(self, tag: str, dest: Source, *, progress: Progress | None = None) -> ArchiveStats:
        """Write a stored model as one export file: a path, ``-`` (stdout) or a binary file object."""
        from .sync.archive import export_model

        return export_model(self, tag, dest, progress=progress)

    def import_model(self, src: Source, *, progress: Progress | None = None, trust: TrustSpec = None) -> ArchiveStats:
        """Store the model of an export file (a path, ``-`` for stdin, or a binary file object), every chunk
        verified; files already here are reused, and nothing is stored unless all of it checks out.
        ``trust`` (default: the cache's policy, else ``$CAS_TRUST``'s): the file's signatures must satisfy it."""
        from .sync.archive import import_model

        with self.writing("the import", "'cas import'"):
            return import_model(self, src, progress=progress, trust=self.trust_policy(trust))

    # -- resolving: the policy the descriptor and services use -----------------

    def resolve(
        self,
        tag: str | tags.Tag,
        *,
        remote: str | None = None,
        refresh: bool = False,
        offline: bool | None = None,
        trust: TrustSpec = None,
        include: Patterns = None,
        exclude: Patterns = None,
    ) -> ModelInfo:
        """The model to use for ``tag``: the local one when there is one (no network), else pulled.

        ``remote`` (default ``$CAS_REMOTE``) is pulled from when the tag is not here; ``refresh`` asks it for
        its newest version first and falls back to the local one, with a warning, when it cannot be reached;
        ``offline`` (default ``$CAS_OFFLINE``) never touches the network.  Processes of this host resolving
        one missing tag at once all end with the same version.  Works from any thread, loop or not.
        ``trust`` (default: the cache's policy, else ``$CAS_TRUST``'s): only a version verified under it is used,
        and a local one that was not is pulled again (its signatures checked; its bytes are here).
        ``include``/``exclude``: only the files these gitignore-style patterns select need be here; those
        missing from a partial local version are pulled for that same version.
        """
        t, known, sel = tags.parse(tag), self.known_policy(trust), Selection.of(include, exclude)
        found = self._here_or_where(t, remote, refresh, offline, known, sel)  # the warm path: nothing else is read
        if isinstance(found, ModelInfo):
            return found
        from .system import eventloop

        policy = self.trust_policy(trust)
        return eventloop.run(lambda: self._resolve_remotely(t, found, refresh, policy, sel))

    async def aresolve(
        self,
        tag: str | tags.Tag,
        *,
        remote: str | None = None,
        refresh: bool = False,
        offline: bool | None = None,
        trust: TrustSpec = None,
        include: Patterns = None,
        exclude: Patterns = None,
    ) -> ModelInfo:
        """``resolve`` for async code: a pull runs on a loop of its own, and the task can be cancelled."""
        import asyncio

        from .system import eventloop

        t, known, sel = tags.parse(tag), self.known_policy(trust), Selection.of(include, exclude)
        found = await asyncio.to_thread(self._here_or_where, t, remote, refresh, offline, known, sel)
        if isinstance(found, ModelInfo):
            return found
        policy = self.trust_policy(trust)
        return await eventloop.run_async(lambda: self._resolve_remotely(t, found, refresh, policy, sel))

    def _here_or_where(self, t: tags.Tag, remote: str | None, refresh: bool, offline: bool | None,
                       policy: TrustPolicy | KnownPolicy | None, sel: Selection | None) -> ModelInfo | str:  # fmt: skip
        """The local version to use, or the URL of the repository to pull ``t`` from."""
        if not refresh:
            with contextlib.suppress(NotFound):
                return self._local(t, policy, sel)
        url = self._pull_from(t, remote, refresh, offline, policy, sel)
        return url or self._local(t, policy, sel, trusted_only=False)

    def _local(self, t: tags.Tag, policy: TrustPolicy | KnownPolicy | None, sel: Selection | None,
               trusted_only: bool = True) -> ModelInfo:  # fmt: skip
        """The local version of ``t``; NotFound also when it is here but the policy does not vouch for it, or
        when it is partial here and lacks files ``sel`` takes."""
        info = self.get(t)
        if not trusted_only:
            info = self.check_trusted(info, policy)
        elif policy is not None and not self.trusted.vouches(policy, info):
            raise NotFound(f"{info.tag} is here but was not verified under {policy.where}")
        if not self.covers(info, sel):
            asked = f"the files {sel.describe()} selects" if sel is not None else "every file"
            raise NotFound(
                f"{info.tag} is partial in the cache at {self.root} and lacks some of {asked}; pull "
                f"them with 'cas pull {info.tag}{' ' + sel.describe() if sel else ''}' from a repository"
            )
        return info

    def _pinned(self, t: tags.Tag) -> tags.Tag:
        """The version to pull for ``t``: one already partly here (so every selection of a tag resolves to one
        version), else ``t``."""
        with contextlib.suppress(NotFound):
            info = self.get(t)
            if info.partial:
                return tags.parse(info.tag)
        return t

    def _pull_from(self, t: tags.Tag, remote: str | None, refresh: bool, offline: bool | None,
                   policy: TrustPolicy | KnownPolicy | None, sel: Selection | None) -> str:  # fmt: skip
        """The repository to pull ``t`` from, or "" to use the local version (a refresh with no repository
        to ask); a model that is not here and cannot be pulled is a NotFound saying why."""
        url = remote or os.environ.get("CAS_REMOTE") or ""
        why_offline = "offline=True" if offline else ""
        if offline is None and env_flag("CAS_OFFLINE", False):
            why_offline = "CAS_OFFLINE is set"
        if url and not why_offline:
            return url
        if refresh:
            return ""
        try:
            here: ModelInfo | None = self.get(t)
        except NotFound:
            here = None
        offline_note = f" ({why_offline}, so it was not pulled)" if why_offline else ""
        if here is not None:
            try:
                self._local(t, policy, sel, trusted_only=False)  # here, but not vouched for or partial: say so
            except NotFound as e:
                raise NotFound(f"{e}{offline_note}") from None
        if why_offline:  # "set CAS_REMOTE" would send the user to what is set already
            fix = "unset CAS_OFFLINE" if offline is None else "drop offline=True"
            also = "" if url else " and set CAS_REMOTE"
            raise NotFound(f"model {t} is not in the cache at {self.root}; {why_offline}, so it was not pulled: {fix}"
                           f"{also} to pull it, or store it with 'cas add PATH {t.name}'")  # fmt: skip
        raise self.refs.not_found(str(t))

    async def _resolve_remotely(self, tag: str | tags.Tag, url: str, refresh: bool, policy: TrustPolicy | None,
                                sel: Selection | None = None) -> ModelInfo:  # fmt: skip
        """Pull ``tag`` on the running (private) loop, one process of this host at a time per name;
        a refresh that cannot pull (repository down, cache read-only or busy) falls back to the local version."""
        from .sync.notices import PullNotes
        from .sync.pull import pull_here

        t = tags.parse(tag)
        try:
            with self.writing(str(t), f"'cas pull {t}'"):
                async with self.locks.ahold(f"resolve-{t.name}"):
                    if not refresh:
                        with contextlib.suppress(NotFound):
                            return self._local(t, policy, sel)  # pulled by another process while this one waited
                    pin = self._pinned(t) if not refresh else t
                    notes = PullNotes(str(pin), url, str(self.root), refresh=refresh)
                    stats = await pull_here(self, str(pin), url, progress=notes.progress, trust=policy, selection=sel)
                    info = stats.info
                    notes.finished(stats)
            self._fit_budget(info)
            return info
        except CasError as e:
            if refresh:
                return self._refresh_failed(t, url, e, policy, sel)
            if isinstance(e, (NotFound, CacheNotWritable, OutOfSpace, Untrusted)):
                raise
            from .repo.stores import public_url  # no user or password in an error

            raise type(e)(f"could not pull {t} from {public_url(url)}: {e}") from None

    def _refresh_failed(self, t: tags.Tag, url: str, error: CasError, policy: TrustPolicy | None,
                        sel: Selection | None) -> ModelInfo:  # fmt: skip
        from .repo.stores import public_url

        try:
            info = self._local(t, policy, sel)
        except NotFound:
            raise type(error)(f"could not pull {t} from {public_url(url)}: {error}") from None
        import warnings

        warnings.warn(f"cas: could not refresh {t} from {public_url(url)} ({error}); using {info.tag}", stacklevel=2)
        return info


def _seed_dirs(seeds: Seeds) -> list[str] | None:
    """Seed folders as strings (None: ``$CAS_SEEDS``'s)."""
    return None if seeds is None else [os.fspath(s) for s in seeds]
