"""Running cas's network work on an event loop of its own, whatever the calling context.

A blocking call that does network work (pull, push, listing or checking a
repository) runs its coroutine with ``run``: on a fresh loop in the calling
thread when that thread runs none (the CLI, a script, a worker thread), else
on a fresh loop in a thread started for the call.  So a caller that already
runs a loop (BentoML's lifespan, an ASGI server, a Jupyter cell) is never
nested or touched; it is only blocked, as by any blocking call.

Async code awaits ``run_async`` instead: the coroutine runs on a loop in its
own thread and the caller's loop only waits for a future, so it keeps
serving (health probes, other requests) while a pull downloads, decodes and
hashes.  Cancelling the awaiting task cancels the work and waits for it to
unwind (worker processes stopped, part files kept for a later resume), so a
cancelled pull leaves a cache that verifies.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from ..errors import CasError

T = TypeVar("T")
Factory = Callable[[], Coroutine[Any, Any, T]]


def run(factory: Factory[T]) -> T:
    """Run ``factory()`` to completion and return its result, from any thread, loop or not."""
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(factory())
        return _Job(factory).wait()
    except RuntimeError as e:
        raise _exiting(e) from None


def _exiting(e: RuntimeError) -> BaseException:
    """``e``, or, once the interpreter is exiting (an ``atexit`` handler: no thread or executor can start),
    a CasError that says so."""
    if threading.main_thread().is_alive():
        return e
    return CasError(f"cas cannot pull or reach a repository while the interpreter exits (from an atexit handler): "
                    f"{e}; resolve models before exit, e.g. descriptor.prefetch(Service) at start")  # fmt: skip


async def run_async(factory: Factory[T]) -> T:
    """Await ``factory()`` run on a loop in another thread, so this loop stays free; cancellable."""
    job = _Job(factory)
    try:
        return await asyncio.shield(asyncio.wrap_future(job.future))
    except asyncio.CancelledError:
        job.cancel()
        await _unwound(job)
        raise


async def _unwound(job: _Job) -> None:
    """Wait until a cancelled job has finished unwinding, whatever further cancellations arrive."""
    while not job.future.done():
        try:
            await asyncio.shield(asyncio.wrap_future(job.future))
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - the job's own outcome no longer matters: the caller cancelled
            return


class _Job:
    """One coroutine on a fresh event loop in a thread of its own; its outcome lands in ``future``."""

    def __init__(self, factory: Factory[Any]):
        self.future: Future[Any] = Future()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False  # by the caller; a cancellation from inside the work is its failure
        # A daemon thread: an interpreter exiting mid-pull is not held up (its fetch workers see their pipe close).
        self._thread = threading.Thread(target=self._thread_main, args=(factory,), name="cas-loop", daemon=True)
        self._thread.start()
        self._started.wait()

    def _thread_main(self, factory: Factory[Any]) -> None:
        try:
            asyncio.run(self._main(factory))
        except BaseException as e:  # noqa: BLE001 - the loop itself failed: the caller raises it
            if not self.future.done():
                self.future.set_exception(e)
        finally:
            self._started.set()

    async def _main(self, factory: Factory[Any]) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        try:
            result = await factory()
        except asyncio.CancelledError as e:
            if self._cancelled:
                self.future.cancel()
            else:
                self.future.set_exception(CasError(f"cas: the work was cancelled from inside ({e or 'no reason'})"))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller, which raises it
            self.future.set_exception(e)
        else:
            self.future.set_result(result)

    def cancel(self) -> None:
        """Ask the work to stop: its task is cancelled at its next await, and unwinds from there."""
        self._cancelled = True
        if self._loop is None or self._task is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._task.cancel)
        except RuntimeError:  # the loop has closed: the work has ended already
            pass

    def wait(self) -> Any:
        """The result, blocking; an interrupt while waiting (Ctrl-C in a notebook) cancels the work first."""
        try:
            return self.future.result()
        except BaseException:
            if not self.future.done():
                self.cancel()
                self._thread.join()
            raise
