"""Lazy model references for services.

    class Classifier:
        model = descriptor.Model("sentiment:latest")

        def __init__(self):
            weights = self.model.path / "model.safetensors"

The first instance access resolves the tag once per process (``latest``
becomes a concrete version), materializes the snapshot and stores the
result in the instance's ``__dict__``, so every later read on that instance
is a plain attribute lookup and the model never changes under it.  It works
from any thread, including one running an event loop (BentoML, ASGI
servers, notebooks); async code can ``await Service.model.aresolve()`` or
``await descriptor.aprefetch(Service)`` so its loop keeps serving meanwhile.

Classes and instances travel (pickle, cloudpickle: Ray, Dask, joblib): a
``Model`` travels as its declaration, and an instance's resolved model as
its concrete tag, resolved again lazily in the receiving process against
that process's cache and repository.
"""

from __future__ import annotations

import functools
import os
from _thread import allocate_lock
from _weakrefset import WeakSet  # what weakref.WeakSet is; loaded at every start already (abc uses it)

from cas import Cache, CasError, ModelInfo, NotFound, default_cache
from cas.content.selection import Selection
from cas.content.tags import parse

# Importing this module is part of every service's start: threading, typing, pathlib and cas.content.tree (blake3)
# are not imported here (``_thread``'s lock is threading's), and nothing else is until a model is resolved.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from cas.trust.policy import TrustPolicy

RESOLVE_ATTEMPTS = 3  # a version removed between resolving and leasing it is resolved again (then pulled)
_DECLARED: WeakSet[Model] = WeakSet()  # every Model of this process, so a forked child can reset them

__all__ = ["Model", "ResolvedModel", "aprefetch", "models_of", "prefetch"]


class ResolvedModel:
    """A model version on local disk: a read-only directory of its files."""

    __slots__ = ("_path", "_source", "info")

    def __init__(self, path: Path | None, info: ModelInfo, source: Model | None = None):
        self._path = path  # None: arrived from another process, materialized here on first use
        self._source = source
        self.info = info

    @property
    def path(self) -> Path:
        """The model's read-only directory."""
        if self._path is None:
            self._path = self._arrive()
        return self._path

    @property
    def tag(self) -> str:
        """The concrete ``name:version`` (never ``latest``)."""
        return self.info.tag

    @property
    def declaration(self) -> Model | None:
        """The ``Model`` this was resolved from; after travelling to another process, that model pinned
        to this concrete version (what resolves it there)."""
        return self._source

    @property
    def root(self) -> str:
        """The root hash of the model's tree."""
        return self.info.root

    def path_of(self, relpath: str) -> Path:
        """The path of one file of the model; refuses paths that leave the model directory."""
        from cas.content.tree import check_path

        try:
            check_path(relpath)
        except CasError as e:
            raise ValueError(f"{self.tag}: {e}") from None
        p = self.path / relpath
        if not p.exists():
            raise FileNotFoundError(f"{relpath!r} is not a file of model {self.tag} (in {self.path})")
        return p

    def _arrive(self) -> Path:
        """Resolve, in this process, the concrete version another process resolved."""
        here = (self._source or Model(self.tag)).resolve()
        if here.root != self.root:
            raise CasError(
                f"{self.tag} resolved to root {here.root[:12]} here but to {self.root[:12]} in the process that "
                "sent this object: two different models are stored under one version; remove one of them"
            )
        return here.path

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __reduce__(self) -> tuple[Any, ...]:
        """Travels as its concrete tag: the receiving process materializes it there, on first use."""
        source = self._source.pinned(self.tag) if self._source is not None else Model(self.tag)
        return (ResolvedModel, (None, self.info, source))

    def __copy__(self) -> ResolvedModel:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ResolvedModel:
        return self  # immutable: a copy in this process is the same model

    def __repr__(self) -> str:
        return f"ResolvedModel({self.tag!r}, path={str(self._path) if self._path else None!r})"


class _Pending:
    """A resolution in progress that other threads and tasks wait for (a held lock: cheaper than an Event,
    and the first access of every service makes one)."""

    __slots__ = ("_running", "error")

    def __init__(self) -> None:
        self._running = allocate_lock()
        self._running.acquire()
        self.error: Exception | None = None

    def wait(self) -> None:
        with self._running:
            pass

    async def await_done(self) -> None:
        """Wait without taking a thread from the loop's executor: a pull can take minutes."""
        import asyncio

        while self._running.locked():
            await asyncio.sleep(0.02)

    def done(self) -> None:
        self._running.release()


class Model:
    """A class attribute naming a model by tag, resolved on first instance access."""

    def __init__(
        self,
        tag: str,
        *,
        cache: Cache | str | os.PathLike[str] | None = None,
        remote: str | None = None,
        refresh: bool = False,
        trust: str | os.PathLike[str] | TrustPolicy | None = None,
        include: list[str] | str | None = None,
        exclude: list[str] | str | None = None,
    ):
        """``remote`` (default ``$CAS_REMOTE``) is pulled from when the tag is not in the cache;
        ``refresh=True`` asks it for its newest version first, falling back to the local one
        with a warning when it cannot be reached.  ``CAS_OFFLINE=1`` never touches the network.
        ``trust`` (default: the cache's policy, else ``$CAS_TRUST``'s): only a version signed by keys
        it trusts for this name is used (see ``cas.trust``).  ``include``/``exclude``: gitignore-style
        patterns; the model's directory then holds exactly the files they select, and only those are pulled
        (two declarations of one tag with different selections resolve to one version)."""
        self._tag = parse(tag)  # a bad tag fails when the class is defined
        sel = Selection.of(include, exclude)  # so do bad patterns
        self._include, self._exclude = (list(sel.include), list(sel.exclude)) if sel else ([], [])
        self.tag = str(self._tag)
        self._cache = cache
        self._remote = remote
        self._refresh = refresh
        self._trust = trust
        self._attr: str | None = None
        self._owner = "?"
        self._reset()

    def _reset(self) -> None:
        self._resolved: ResolvedModel | None = None
        self._pending: _Pending | None = None
        self._lock = allocate_lock()
        _DECLARED.add(self)

    def forget_pending(self) -> None:
        """In a forked child: the resolution its parent's thread was running (and any lock that thread held)
        is not there, so the child resolves on its own."""
        if self._resolved is None:
            self._pending = None
            self._lock = allocate_lock()

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = name
        self._owner = owner.__qualname__

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        resolved = self._resolved or self.resolve()
        if self._attr is not None:
            try:
                obj.__dict__[self._attr] = resolved
            except AttributeError:  # __slots__ class: stays a descriptor read
                pass
        return resolved

    def resolve(self) -> ResolvedModel:
        """Resolve the tag and materialize the model; once per process, whatever the thread count."""
        while self._resolved is None:
            pending, mine = self._claim()
            if mine:
                self._run(pending)
            else:
                pending.wait()
                if pending.error is not None:
                    raise pending.error
        return self._resolved

    async def aresolve(self) -> ResolvedModel:
        """``resolve`` for async code (``await Service.model.aresolve()``): the event loop keeps serving
        while the model is pulled, and cancelling the task stops the pull, keeping what it verified."""
        from cas.system import eventloop

        while self._resolved is None:
            pending, mine = self._claim()
            if mine:  # all of it off this loop, settled from there: a sync reader on this loop may wait for it
                try:
                    await eventloop.run_async(functools.partial(self._arun, pending))
                except BaseException as e:
                    self._abandon(pending, e)
                    raise
            else:
                await pending.await_done()
                if pending.error is not None:
                    raise pending.error
        return self._resolved

    def _claim(self) -> tuple[_Pending, bool]:
        """The resolution in progress, and whether the caller must run it (nobody else is)."""
        with self._lock:
            if self._pending is not None:
                return self._pending, False
            self._pending = _Pending()
            return self._pending, True

    def _run(self, pending: _Pending) -> None:
        """Resolve here, in the calling thread, and settle ``pending`` with the outcome."""
        try:
            cache = self._cache_here()
            for attempt in range(RESOLVE_ATTEMPTS):
                info = cache.resolve(self._tag, remote=self._remote, refresh=self._refresh, trust=self._trust,
                                     include=self._include, exclude=self._exclude)  # fmt: skip
                path = self._materialize(cache, info, last=attempt == RESOLVE_ATTEMPTS - 1)
                if path is not None:
                    break
            resolved = ResolvedModel(path, info, self)
        except BaseException as e:  # noqa: BLE001 - published to the waiters, then raised
            raise self._finish(pending, None, e) from None
        self._finish(pending, resolved, None)

    async def _arun(self, pending: _Pending) -> None:
        """``_run`` on a private loop: blocking calls are fine here, and the pull can be cancelled."""
        try:
            cache = self._cache_here()
            for attempt in range(RESOLVE_ATTEMPTS):
                info = await cache.aresolve(self._tag, remote=self._remote, refresh=self._refresh, trust=self._trust,
                                            include=self._include, exclude=self._exclude)  # fmt: skip
                path = self._materialize(cache, info, last=attempt == RESOLVE_ATTEMPTS - 1)
                if path is not None:
                    break
            resolved = ResolvedModel(path, info, self)
        except BaseException as e:  # noqa: BLE001 - published to the waiters, then raised
            raise self._finish(pending, None, e) from None
        self._finish(pending, resolved, None)

    def _abandon(self, pending: _Pending, error: BaseException) -> None:
        """Settle ``pending`` if ``_arun`` never got to (its private loop could not start)."""
        with self._lock:
            if self._pending is not pending:
                return
        self._finish(pending, None, error)

    def _finish(self, pending: _Pending, resolved: ResolvedModel | None, error: BaseException | None) -> BaseException:
        """Publish the outcome; waiters raise the error, or retry themselves after a cancellation.
        Returns the error to raise (a cas error names the attribute)."""
        if isinstance(error, CasError):
            error = self._named(error)
        with self._lock:
            self._resolved = resolved
            self._pending = None
        pending.error = error if isinstance(error, Exception) else None
        pending.done()
        return error  # type: ignore[return-value]

    def _materialize(self, cache: Cache, info: ModelInfo, last: bool) -> Path | None:
        """The snapshot of ``info``, leased; None when a removal (``cas rm``, gc evicting it to fit a budget)
        took the version between resolving and leasing it, so resolving again finds or pulls it anew."""
        cache.lease(info)  # before the snapshot: a removal that finished first is reported, not rebuilt
        try:
            return cache.materialize(info, include=self._include, exclude=self._exclude)
        except NotFound:
            if last or cache.refs.exists(info):
                raise
            return None

    def _cache_here(self) -> Cache:
        if isinstance(self._cache, Cache):
            return self._cache
        return Cache(self._cache) if self._cache is not None else default_cache()

    def _named(self, e: CasError) -> CasError:
        """The error, naming the attribute (the cache's messages name the tag, and a pull's the repository)."""
        return type(e)(f"{self._owner}.{self._attr}: {e}")

    def pinned(self, tag: str) -> Model:
        """This declaration for one concrete version of its model (what a resolved instance carries)."""
        model = Model.__new__(Model)
        model.__setstate__({**self.__getstate__(), "tag": tag, "_refresh": False})
        return model

    def __getstate__(self) -> dict[str, Any]:
        """Travels as its declaration; the receiving process resolves it there, on first access."""
        return {k: getattr(self, k) for k in ("tag", "_cache", "_remote", "_refresh", "_trust", "_include", "_exclude",
                                              "_attr", "_owner")}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_trust": None, "_include": [], "_exclude": [], **state})
        self._tag = parse(self.tag)
        self._reset()

    def __repr__(self) -> str:
        sel = "".join(f", {k}={v!r}" for k, v in (("include", self._include), ("exclude", self._exclude)) if v)
        return f"Model({self.tag!r}{sel})"


def _after_fork_in_child() -> None:
    """Only the forking thread exists in the child: resolutions other threads were running never finish."""
    for model in list(_DECLARED):
        model.forget_pending()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def models_of(obj_or_cls: Any) -> dict[str, Model]:
    """The Model attributes of a class (or of an instance's class), by attribute name."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    found: dict[str, Model] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Model):
                found[name] = value
            elif name in found:  # overridden by a plain attribute in a subclass
                del found[name]
    return found


def _declarations(obj_or_cls: Any) -> dict[str, Model]:
    """What to resolve for each model of a class or instance: an instance that arrived from another
    process carries its own concrete versions, which win over the class's tags."""
    models = models_of(obj_or_cls)
    carried = getattr(obj_or_cls, "__dict__", {}) if not isinstance(obj_or_cls, type) else {}
    for name in models:
        resolved = carried.get(name)
        if isinstance(resolved, ResolvedModel) and resolved.declaration is not None:
            models[name] = resolved.declaration
    return models


def prefetch(obj_or_cls: Any, *, max_workers: int = 8) -> dict[str, ResolvedModel]:
    """Resolve every model a class (or instance) depends on, concurrently, e.g. before serving traffic."""
    from concurrent.futures import ThreadPoolExecutor

    models = _declarations(obj_or_cls)
    if not models:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(models))) as pool:
        resolved = list(pool.map(Model.resolve, models.values()))
    return dict(zip(models, resolved))


async def aprefetch(obj_or_cls: Any) -> dict[str, ResolvedModel]:
    """``prefetch`` for async code (an ASGI lifespan): the loop keeps serving while models are pulled.

    All or nothing: the first failure cancels the other resolutions and is raised."""
    import asyncio

    models = _declarations(obj_or_cls)
    tasks = [asyncio.ensure_future(m.aresolve()) for m in models.values()]
    try:
        return dict(zip(models, await asyncio.gather(*tasks)))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
