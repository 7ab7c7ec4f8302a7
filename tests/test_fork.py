"""Forking servers and exiting interpreters: a child forked while a thread of its parent is resolving a model
resolves on its own (gunicorn ``--preload`` with uvicorn workers, ``os.fork``, multiprocessing's 'fork'),
whatever the parent does next, and an ``atexit`` handler resolves or gets a CasError naming the attribute."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO, free_port, published, require, stats, wait_until
from .test_frameworks import http, served, service_env  # noqa: F401 - served: the fixture

FORKING_PARENT = textwrap.dedent("""
    import hashlib, json, multiprocessing, os, sys, threading, time
    import descriptor
    from cas import Cache

    home, remote, how, out = sys.argv[1:5]

    class Service:
        model = descriptor.Model("encoder:v1", cache=Cache(home), remote=remote)

    def files():
        root = Service().model.path  # the first access in this process
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}

    def child(after_parent):
        if after_parent:  # the parent's thread has published the snapshot meanwhile
            while not os.path.isdir(os.path.join(home, "snapshots")) or not os.listdir(os.path.join(home, "snapshots")):
                time.sleep(0.05)
        with open(out + ".tmp", "w") as f:
            json.dump(files(), f)
        os.rename(out + ".tmp", out)

    threading.Thread(target=Service.model.resolve, daemon=True).start()
    while not os.path.isdir(os.path.join(home, "tmp", "pull")):  # the pull is under way: it holds its locks
        time.sleep(0.01)
    if how == "multiprocessing":
        proc = multiprocessing.get_context("fork").Process(target=child, args=(False,))
        proc.start()
        proc.join(150)
        sys.exit(0 if proc.exitcode == 0 else 1)
    pid = os.fork()
    if pid == 0:
        try:
            child(how == "after")
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(0)
    print(pid, flush=True)
    if how == "killed":  # the test kills this process, locks held, while the child waits for them
        time.sleep(600)
    os.waitpid(pid, 0)
""")


@pytest.fixture
def slow_repo(tmp_path, synthetic, server, proxy, token):
    """The synthetic model as encoder:v1 behind a proxy that answers each pack request 1.5 s late."""
    url, _ = server
    published(tmp_path, synthetic, "encoder:v1", url)
    return proxy(url, delay=1.5)


def expected(model: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model.iterdir())}


@pytest.mark.parametrize("how", ["during", "after", "multiprocessing", "killed"])
def test_a_child_forked_while_its_parent_pulls_resolves_on_its_own(tmp_path, synthetic, slow_repo, how):
    """during: the child's first access comes while the parent's thread still pulls; after: once that pull has
    published the snapshot; killed: the parent is SIGKILLed holding its pull's locks while the child waits."""
    out = tmp_path / "child.json"
    parent = subprocess.Popen([sys.executable, "-c", FORKING_PARENT, str(tmp_path / "host"), slow_repo, how, str(out)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        if how == "killed":
            int(parent.stdout.readline())  # the child exists
            parent.kill()
        wait_until(out.exists, timeout=120, what="the forked child to resolve the model")
    finally:
        parent.kill()
        parent.wait()
    assert json.loads(out.read_text()) == expected(synthetic)
    if how == "killed":
        assert stats(slow_repo)["pack_requests"] >= 2  # the child pulled what the killed parent had not


ATEXIT = textwrap.dedent("""
    import atexit, concurrent.futures.thread, sys
    import descriptor
    from cas import Cache, CasError

    class Service:
        model = descriptor.Model("encoder:v1", cache=Cache(sys.argv[1]), remote=sys.argv[2])

    def at_exit():
        try:
            print("files", sorted(p.name for p in Service().model.path.iterdir()))
        except CasError as e:
            print("CasError", e)

    atexit.register(at_exit)
""")


def test_resolving_from_an_atexit_handler_works_locally_and_is_a_named_error_when_it_must_pull(tmp_path, synthetic,
                                                                                              slow_repo):  # fmt: skip
    home = tmp_path / "host"
    run = lambda: subprocess.run([sys.executable, "-c", ATEXIT, str(home), slow_repo], cwd=REPO,  # noqa: E731
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    first = run()
    assert first.stdout.startswith("CasError Service.model: "), first.stdout + first.stderr
    assert "while the interpreter exits" in first.stdout and "Traceback" not in first.stderr
    from cas import Cache

    Cache(home).pull("encoder:v1", slow_repo)
    second = run()
    assert second.stdout.strip() == f"files {sorted(p.name for p in synthetic.iterdir())}", second.stderr


def test_gunicorn_preload_workers_get_the_model_the_master_was_pulling(tmp_path, synthetic, slow_repo, served):  # noqa: F811
    require("gunicorn")
    require("uvicorn")
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-k", "uvicorn.workers.UvicornWorker",
           "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "preload_app:app"]  # fmt: skip
    app = served(cmd, service_env(tmp_path / "host", slow_repo, tmp_path), tmp_path / "gunicorn.log")
    wait_until(lambda: app.alive() and "Booting worker" in app.output(), what="gunicorn's workers")
    answers = [http("GET", f"http://127.0.0.1:{port}/files", timeout=120) for _ in range(6)]
    for status, body in answers:
        assert status == 200, body
        assert body["files"] == expected(synthetic)
    os.killpg(app.proc.pid, signal.SIGTERM)
    app.proc.wait(timeout=30)  # a worker stuck on its parent's lock ignored SIGTERM
    assert "Traceback" not in app.output()


STAGGERED = textwrap.dedent("""
    import hashlib, json, os, sys, threading, time
    import descriptor

    class Service:
        model = descriptor.Model("encoder:v1", remote=sys.argv[1])

    def report():
        try:
            root = Service().model.path
            return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}
        except BaseException as e:
            return {"error": f"{type(e).__name__}: {e}"}

    threading.Thread(target=Service.model.resolve, daemon=True).start()  # imports the pull machinery meanwhile
    r, w = os.pipe()
    for i in range(int(sys.argv[2])):
        time.sleep(0.03)  # forks land all along the thread's imports, its pull and its publishing
        if os.fork() == 0:
            os.close(r)
            os.write(w, (json.dumps(report()) + "\\n").encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        print(f.read(), end="", flush=True)
""")


def test_children_forked_all_along_a_resolution_each_get_the_whole_model(tmp_path, synthetic, slow_repo):
    """Forks at every moment of the parent thread's resolution, while it imports asyncio and aiohttp too: a
    module half imported at the fork was left half initialized in the child (NameError in asyncio)."""
    env = {**os.environ, "CAS_HOME": str(tmp_path / "host")}
    out = subprocess.run([sys.executable, "-c", STAGGERED, slow_repo, "12"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    reports = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(reports) == 12, out.stdout + out.stderr
    assert all(r == expected(synthetic) for r in reports), [r for r in reports if r != expected(synthetic)][:3]


AT_THE_LOCK = textwrap.dedent("""
    import fcntl, hashlib, json, os, sys, threading, time
    import descriptor
    from cas import Cache

    home, remote, out = sys.argv[1:4]
    opening = threading.Event()
    flock = fcntl.flock

    def widened(fd, op):  # the instant between opening the resolve lock's file and locking it, made 0.5 s long
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith("resolve-") and not opening.is_set():
            opening.set()
            time.sleep(0.5)
        return flock(fd, op)

    fcntl.flock = widened

    class Service:
        model = descriptor.Model("encoder:v1", cache=Cache(home), remote=remote)

    threading.Thread(target=Service.model.resolve, daemon=True).start()
    opening.wait()
    parent = os.getpid()
    pid = os.fork()  # while the thread holds the lock file open, not yet locked
    if pid == 0:
        while os.getppid() == parent:  # the test kills the parent mid-pull, its lock taken
            time.sleep(0.05)
        root = Service().model.path
        with open(out + ".part", "w") as f:
            json.dump({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}, f)
        os.replace(out + ".part", out)  # seen whole by the test, or not at all
        os._exit(0)
    print(pid, flush=True)
    time.sleep(600)
""")


def test_a_child_forked_as_its_parent_opens_a_lock_file_does_not_keep_that_lock(tmp_path, synthetic, slow_repo):
    """A lock file a thread had opened but not yet locked at the fork was shared with the child, which then held
    the parent's lock after the parent died, and waited on it itself for ten minutes (found by the soak)."""
    out, home = tmp_path / "child.json", tmp_path / "host"
    parent = subprocess.Popen([sys.executable, "-c", AT_THE_LOCK, str(home), slow_repo, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        int(parent.stdout.readline())
        wait_until((home / "tmp" / "pull").is_dir, timeout=60, what="the parent's pull to start, its lock taken")
        parent.kill()
        wait_until(out.exists, timeout=90, what="the forked child to resolve the model")
    finally:
        parent.kill()
        parent.wait()
    assert json.loads(out.read_text()) == expected(synthetic)


AT_AN_IMPORT = textwrap.dedent("""
    import hashlib, json, os, sys, threading, time
    import importlib._bootstrap
    import descriptor
    from cas import Cache

    home, remote, out = sys.argv[1:4]
    held = []  # kept alive past the fork, as something in the thread kept botocore's lock alive in the soak

    def importing():  # a thread of the app has taken aiohttp's import lock and is still finding the module
        held.append(importlib._bootstrap._ModuleLockManager("aiohttp"))
        held[0].__enter__()
        time.sleep(600)

    threading.Thread(target=importing, daemon=True).start()
    while not held:
        time.sleep(0.01)
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:  # pulls over HTTP: imports aiohttp, whose import lock is held by a thread that is not here
        class Service:
            model = descriptor.Model("encoder:v1", cache=Cache(home), remote=remote)

        root = Service().model.path
        with open(out + ".part", "w") as f:
            json.dump({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}, f)
        os.replace(out + ".part", out)
        os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
""")


def test_a_child_forked_while_a_thread_begins_an_import_imports_it_itself(tmp_path, synthetic, slow_repo):
    """A module whose import lock another thread held at the fork, still finding the module (so not yet in
    ``sys.modules``), stayed locked in the child for ever: the child's first import of it waited on a thread
    that was not there (found by the soak: forked services pulling from S3, their parent killed, stuck importing
    botocore.docs.docstring, 3 of 40 in a stress of it)."""
    out = tmp_path / "child.json"
    parent = subprocess.Popen([sys.executable, "-c", AT_AN_IMPORT, str(tmp_path / "host"), slow_repo, str(out)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(parent.stdout.readline())
    try:
        wait_until(out.exists, timeout=90, what="the forked child to resolve the model")
    finally:
        for pid in (child, parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()
    assert json.loads(out.read_text()) == expected(synthetic)
