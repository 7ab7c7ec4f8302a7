"""Push worker processes: the packs they build, and what happens when one or the push dies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cas import Cache, CasError, CorruptObject

from .conftest import REPO, TOKEN, descendants, edit_largest_blob, processes, tree_files, wait_until


def _packs(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (repo / "packs").rglob("*") if p.is_file()}


@pytest.mark.parametrize("count", ["1", "2"])
def test_worker_processes_and_this_one_upload_the_same_packs(tmp_path, minilm, server, token, monkeypatch, count):
    """Packs do not depend on which process built them: the same model pushed from one process or from
    several (through ``cas serve``, the token passed to the workers) lands as the same pack files."""
    src = Cache(tmp_path / "src")
    src.add(minilm, "minilm:v1")
    monkeypatch.setenv("CAS_PUSH_PROCESSES", "0")
    alone = src.push("minilm:v1", f"file://{tmp_path / 'alone'}")
    url, folder = server
    monkeypatch.setenv("CAS_PUSH_PROCESSES", count)
    spread = src.push("minilm:v1", url)
    assert spread.bytes_uploaded == alone.bytes_uploaded
    assert len(_packs(folder)) >= 6  # three packs and their indexes: work for every process
    assert _packs(folder) == _packs(tmp_path / "alone")
    host = Cache(tmp_path / "host")
    host.pull("minilm:v1", url)
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)


def test_push_workers_upload_to_s3_with_the_credentials_of_the_environment(tmp_path, minilm, s3, monkeypatch):
    src = Cache(tmp_path / "src")
    src.add(minilm, "minilm:v1")
    monkeypatch.setenv("CAS_PUSH_PROCESSES", "2")
    pushed = src.push("minilm:v1", s3)
    host = Cache(tmp_path / "host")
    assert host.pull("minilm:v1", s3).bytes_fetched == pushed.bytes_uploaded
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)
    assert host.verify().ok


def test_a_bad_worker_count_is_a_clear_error(tmp_path, synthetic, monkeypatch):
    src = Cache(tmp_path / "src")
    src.add(synthetic, "m:v1")
    monkeypatch.setenv("CAS_PUSH_PROCESSES", "all")
    with pytest.raises(CasError, match="CAS_PUSH_PROCESSES='all' is not a number"):
        src.push("m:v1", f"file://{tmp_path / 'repo'}")


def test_a_worker_killed_mid_push_ends_in_one_line_and_a_second_push_completes(tmp_path, minilm, server, proxy,
                                                                                token, monkeypatch):  # fmt: skip
    url, folder = server
    slow = proxy(url, put_delay=1.0)  # each pack upload waits: the worker is alive to be killed
    monkeypatch.setenv("CAS_PUSH_PROCESSES", "1")
    src = Cache(tmp_path / "src")
    src.add(minilm, "minilm:v1")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            src.push("minilm:v1", slow)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: _push_workers(os.getpid()), what="a push worker")
    os.kill(_push_workers(os.getpid())[0], 9)
    t.join(120)
    assert isinstance(outcome[0], CasError)
    assert "a push worker (python -m cas.sync.pushworker) exited with code -9 mid-push; push again" in str(outcome[0])
    assert not (folder / "refs").exists() or not list((folder / "refs").rglob("v1"))  # no ref to missing data
    src.push("minilm:v1", url)
    host = Cache(tmp_path / "host")
    host.pull("minilm:v1", url)
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)


def test_a_killed_push_takes_its_workers_with_it(tmp_path, minilm, server, proxy):
    url, _ = server
    stalled = proxy(url, put_delay=3600)  # no pack upload ever finishes: only the kill ends the workers
    Cache(tmp_path / "src").add(minilm, "minilm:v1")
    code = "import sys; from cas import Cache; Cache(sys.argv[1]).push('minilm:v1', sys.argv[2])"
    env = {**os.environ, "CAS_PUSH_PROCESSES": "2", "CAS_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "src"), stalled], cwd=REPO, env=env)
    wait_until(lambda: len(_push_workers(proc.pid)) == 2, what="two push workers")
    workers = _push_workers(proc.pid)
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(descendants(w) for w in workers), timeout=20, what="the workers to exit")


def _push_workers(parent: int) -> list[int]:
    """The running `python -m cas.sync.pushworker` children of a process."""
    table = processes()
    return [p for p in descendants(parent, table) if p != parent and b"cas.sync.pushworker" in table[p].cmdline]


def test_a_blob_changed_after_add_is_never_pushed_under_its_old_id(tmp_path, minilm):
    """Every chunk a push reads from a blob is hashed again: a blob edited through a hardlink (possible as root,
    or after a chmod) makes the push fail in one line saying what to run, and the repository gets no ref."""
    cache = Cache(tmp_path / "cache")
    edit_largest_blob(cache, cache.add(minilm, "m:v1"))
    repo = tmp_path / "repo"
    with pytest.raises(CorruptObject, match=r"blob .* does not hold chunk .* any more; run 'cas verify'"):
        cache.push("m:v1", f"file://{repo}")
    assert not (repo / "refs").exists() or not any((repo / "refs").rglob("*"))
