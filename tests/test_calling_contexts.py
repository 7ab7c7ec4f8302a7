"""Every blocking entry point from any calling context, and the async variants (`a…`) for async code.

Services call cas from threads that already run an event loop (BentoML's
lifespan, ASGI servers, Ray Serve, Jupyter); a blocking call there must
work without touching that loop, and an async call must leave the loop
free to serve while a pull runs.  The repositories are real `cas serve`
processes, throttled through the fault proxy where a pull must last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import descriptor
from cas import Cache, CasError, RepoError, check_repository, list_remote

from .conftest import descendants, free_port, processes, published, stats, tree_files, wait_until


def in_main_thread(fn: Callable[[], object]) -> object:
    return fn()


def in_plain_thread(fn: Callable[[], object]) -> object:
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


def in_running_loop(fn: Callable[[], object]) -> object:
    """As a notebook cell, a BentoML lifespan or an async endpoint calls it: inside a coroutine on a live loop."""

    async def main() -> object:
        return fn()

    return asyncio.run(main())


def in_thread_running_a_loop(fn: Callable[[], object]) -> object:
    return in_plain_thread(lambda: in_running_loop(fn))


CONTEXTS = [in_main_thread, in_plain_thread, in_running_loop, in_thread_running_a_loop]


@pytest.fixture
def repo(tmp_path, synthetic, server, token) -> str:
    """A `cas serve` holding the synthetic model as m:v1."""
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    return url


def service(cache: Cache, remote: str):
    class Service:
        model = descriptor.Model("m:latest", cache=cache, remote=remote)

    return Service


ENTRY_POINTS = {
    "Cache.pull": lambda cache, url: cache.pull("m:v1", url).info.tag,
    "Cache.push": lambda cache, url: (cache.pull("m:v1", url), cache.push("m:v1", url))[1].info.tag,
    "list_remote": lambda cache, url: list_remote(url)[0].tag,
    "check_repository": lambda cache, url: "m:v1" if check_repository(url, deep=True).ok else "damaged",
    "first access": lambda cache, url: service(cache, url)().model.tag,
    "prefetch": lambda cache, url: descriptor.prefetch(service(cache, url))["model"].tag,
    "Cache.resolve": lambda cache, url: cache.resolve("m:latest", remote=url).tag,
}


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_blocking_entry_point_works_in_every_calling_context(tmp_path, repo, synthetic, entry, context):
    cache = Cache(tmp_path / "host")
    assert context(lambda: ENTRY_POINTS[entry](cache, repo)) == "m:v1"
    if entry not in ("list_remote", "check_repository"):
        assert tree_files(cache.materialize("m:v1")) == tree_files(synthetic)


def test_a_notebook_cell_pulls_and_reads_a_cold_descriptor(tmp_path, minilm, server, token):
    """`asyncio.run(main())` as Jupyter runs cells: main calls the blocking API and a descriptor that must pull."""
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)

    class Service:
        model = descriptor.Model("minilm:latest", cache=Cache(tmp_path / "b"), remote=url)

    async def main():
        pulled = Cache(tmp_path / "a").pull("minilm:latest", url)
        return pulled.info, Service().model

    info, model = asyncio.run(main())
    assert info.tag == model.tag == "minilm:v1"
    assert tree_files(model.path) == tree_files(minilm)


# -- async variants ---------------------------------------------------------------------------


async def until(condition: Callable[[], bool], task: asyncio.Future, what: str, timeout: float = 60) -> None:
    """Wait on the loop until ``condition`` holds; fail if ``task`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if task.done():
            raise AssertionError(f"the task ended before {what}: {task.exception() or task.result()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def ticking(work, every: float = 0.01) -> tuple[object, int, float]:
    """Run ``work`` while a task ticks on the same loop: (result, ticks, seconds)."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(every)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    start = time.monotonic()
    try:
        result = await work
    finally:
        ticker.cancel()
    return result, ticks, time.monotonic() - start


def test_apull_keeps_the_callers_loop_serving_and_the_blocking_pull_does_not(tmp_path, minilm, server, proxy, token):
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    slow = proxy(url, delay=0.3)

    async def pull_async():
        return await Cache(tmp_path / "a").apull("minilm:v1", slow)

    async def pull_blocking():
        return Cache(tmp_path / "b").pull("minilm:v1", slow)

    pulled, ticks, seconds = asyncio.run(ticking(pull_async()))
    assert pulled.info.tag == "minilm:v1" and seconds > 0.5
    assert ticks >= 20  # the loop ran its other task all along (about 50 ticks in half a second)
    _, blocked_ticks, seconds = asyncio.run(ticking(pull_blocking()))
    assert seconds > 0.5 and blocked_ticks <= 2  # the blocking call holds the loop: why the async variants exist
    assert tree_files(Cache(tmp_path / "a").materialize("minilm:v1")) == tree_files(minilm)


def test_apush_then_aresolve_and_aprefetch(tmp_path, synthetic, minilm, server, token):
    url, _ = server
    src = Cache(tmp_path / "src")
    src.add(synthetic, "a:v1")
    src.add(minilm, "b:v1")

    class Service:
        a = descriptor.Model("a:latest", cache=tmp_path / "host", remote=url)
        b = descriptor.Model("b:v1", cache=tmp_path / "host", remote=url)

    async def main():
        pushed = await asyncio.gather(src.apush("a:v1", url), src.apush("b:v1", url))
        first = await Service.a.aresolve()
        both = await descriptor.aprefetch(Service)
        return pushed, first, both

    pushed, first, both = asyncio.run(main())
    assert [s.info.tag for s in pushed] == ["a:v1", "b:v1"]
    assert both["a"] is first and both["b"].tag == "b:v1"
    s = Service()
    assert s.a is first and s.__dict__["a"] is first  # after aresolve the attribute is a plain read
    assert tree_files(s.b.path) == tree_files(minilm)


def test_aprefetch_of_a_resolved_instance_is_the_instance_s_models(tmp_path, synthetic, repo):
    Service = service(Cache(tmp_path / "host"), repo)
    s = Service()
    assert asyncio.run(descriptor.aprefetch(s))["model"] is s.model


def test_a_cancelled_aresolve_leaves_a_cache_that_verifies_and_a_pull_that_resumes(tmp_path, minilm, server, proxy,
                                                                                   token, monkeypatch):  # fmt: skip
    url, _ = server
    packed = published(tmp_path, minilm, "minilm:v1", url).bytes_uploaded
    slow = proxy(url, delay=0.4)
    cache = Cache(tmp_path / "host")

    class Service:
        model = descriptor.Model("minilm:latest", cache=cache, remote=slow)

    def verified_some() -> bool:  # the logs of verified chunks name a few hundred (an offset a line)
        return sum(p.stat().st_size for p in (cache.root / "tmp" / "pull").glob("*/*.done")) > 2000

    async def cancel_midway():
        task = asyncio.ensure_future(Service.model.aresolve())
        await until(verified_some, task, "the pull to verify some chunks")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    monkeypatch.setenv("CAS_PULL_PROCESSES", "1")  # a worker process too: it must be gone when the task is
    asyncio.run(cancel_midway())
    table = processes()
    assert not [p for p in descendants(os.getpid(), table) if b"cas.sync.fetchworker" in table[p].cmdline]
    assert cache.list() == [] and cache.verify(repair=False).ok  # (a repairing verify would drop the resumable part)
    served_before = settled_bytes(slow)
    resolved = asyncio.run(Service.model.aresolve())
    assert 0 < stats(slow)["pack_bytes"] - served_before < packed  # resumed with what the cancelled pull verified
    assert resolved.tag == "minilm:v1" and tree_files(resolved.path) == tree_files(minilm)
    assert cache.verify().ok


def settled_bytes(proxy_url: str, delay: float = 0.4) -> int:
    """The pack bytes a proxy has served, once requests taken before a cancellation have finished there."""
    before = stats(proxy_url)["pack_bytes"]
    for _ in range(60):
        time.sleep(delay + 0.2)
        now = stats(proxy_url)["pack_bytes"]
        if now == before:
            return now
        before = now
    raise AssertionError("the proxy kept serving for a minute after the pull was cancelled")


def test_threads_waiting_on_an_async_resolution_in_progress_get_its_result(tmp_path, minilm, server, proxy, token):
    """A sync reader on the same loop as a background aresolve (a request arriving before an ASGI app's
    prefetch ends) waits for it instead of deadlocking the loop, and both see one ResolvedModel."""
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    slow = proxy(url, delay=0.2)

    class Service:
        model = descriptor.Model("minilm:latest", cache=tmp_path / "host", remote=slow)

    async def main():
        background = asyncio.ensure_future(descriptor.aprefetch(Service))
        await until(lambda: stats(slow)["pack_requests"] > 0, background, "the pull to start")
        blocking = Service().model  # on the loop's own thread, while the prefetch runs
        return blocking, (await background)["model"]

    blocking, prefetched = asyncio.run(main())
    assert blocking is prefetched and blocking.tag == "minilm:v1"


# -- a repository that is down, slow or gone -------------------------------------------------


@pytest.mark.parametrize("how", ["resolve", "aresolve"])
def test_a_repository_that_is_down_is_one_error_naming_attribute_tag_and_remote(tmp_path, how):
    url = f"http://127.0.0.1:{free_port()}"

    class Service:
        model = descriptor.Model("minilm:latest", cache=tmp_path / "host", remote=url)

    with pytest.raises(RepoError) as e:
        Service().model if how == "resolve" else asyncio.run(Service.model.aresolve())
    message = str(e.value)
    assert "Service.model: could not pull minilm:latest from " + url in message
    assert "cannot connect" in message and "\n" not in message


def test_a_silent_repository_ends_in_an_error_after_the_stall_timeout(tmp_path, minilm, server, proxy, token,
                                                                      monkeypatch):  # fmt: skip
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    silent = proxy(url, "silent")
    monkeypatch.setenv("CAS_STALL_TIMEOUT", "0.5")

    class Service:
        model = descriptor.Model("minilm:v1", cache=tmp_path / "host", remote=silent)

    with pytest.raises(RepoError, match=r"Service\.model: could not pull minilm:v1 from .*no data for 0.5 s"):
        Service().model
    assert Cache(tmp_path / "host").list() == []


def test_refresh_with_the_repository_down_starts_on_the_local_version_with_one_warning(tmp_path, synthetic):
    cache = Cache(tmp_path / "c")
    info = cache.add(synthetic, "m:v1")
    down = f"http://127.0.0.1:{free_port()}"

    class Service:
        model = descriptor.Model("m:latest", cache=cache, remote=down, refresh=True)
        other = descriptor.Model("m:latest", cache=cache)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = asyncio.run(descriptor.aprefetch(Service))
        tags = [Service().model.tag for _ in range(3)]
    assert resolved["model"].tag == info.tag and tags == [info.tag] * 3
    said = [str(w.message) for w in caught if "could not refresh" in str(w.message)]
    assert len(said) == 1 and down in said[0] and info.tag in said[0]


def test_an_interrupted_blocking_call_in_a_running_loop_stops_its_pull(tmp_path, minilm, server, proxy, token):
    """Ctrl-C in a notebook cell blocked in a pull: the pull is cancelled and unwinds before the interrupt is raised.

    The loop is driven as ipykernel drives it (run_until_complete, Python's own SIGINT handler), not by
    asyncio.run, whose handler only cancels the task at its next await."""
    url, _ = server
    published(tmp_path, minilm, "minilm:v1", url)
    # The pull is still waiting for its first range when the interrupt comes, however loaded the machine (with
    # 3 s and three requests seen first, a suite beside a soak saw the pull finish before the interrupt).
    slow = proxy(url, delay=5.0)
    cache = Cache(tmp_path / "host")

    def interrupt_soon() -> None:
        wait_until(lambda: stats(slow)["pack_requests"] >= 1, what="the pull to start")
        os.kill(os.getpid(), signal.SIGINT)

    async def cell():
        return cache.pull("minilm:v1", slow)

    # Python's own handler, as ipykernel installs it: a suite started in the background (nohup, `&`) inherits
    # SIGINT ignored, and the interrupt would never come.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_soon, daemon=True).start()
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
    finally:
        loop.close()
        signal.signal(signal.SIGINT, previous)
    assert not [t for t in threading.enumerate() if t.name == "cas-loop"]
    assert cache.list() == [] and cache.verify().ok
    assert cache.pull("minilm:v1", url).info.tag == "minilm:v1"


def test_resolve_names_the_tag_and_what_to_do_when_nothing_can_be_pulled(tmp_path):
    with pytest.raises(CasError, match=r"model m:latest is not in the cache at .*CAS_REMOTE"):
        Cache(tmp_path / "c").resolve("m:latest", offline=False)
    assert not Path(tmp_path / "c").exists()  # a failed lookup writes nothing


def test_an_aresolve_whose_loop_cannot_start_leaves_the_model_resolvable(tmp_path, synthetic, monkeypatch):
    """A private loop that fails to start (no thread left) is the caller's error; the next access retries
    instead of waiting forever for a resolution that never ran."""
    cache = Cache(tmp_path / "c")
    cache.add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:v1", cache=cache)

    def no_threads(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", no_threads)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            asyncio.run(Service.model.aresolve())
    assert in_plain_thread(lambda: Service().model.tag) == "m:v1"
