"""Fetching and assembling pulled files: prefix hashing, worker processes, lying trees."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from cas import Cache, CasError, CorruptObject
from cas.content.tree import Tree, root_of
from cas.repo.format import locator_key, ref_key, tree_key
from cas.sync.prefixhash import STEP, PrefixHasher

from .conftest import (
    REPO,
    blobs_of,
    descendants,
    processes,
    published,
    tree_files,
    verified_chunks,
    wait_until,
)


def _layout(sizes: list[int]) -> list[tuple[int, int]]:
    out, offset = [], 0
    for n in sizes:
        out.append((offset, n))
        offset += n
    return out


def test_prefix_hasher_matches_the_whole_file_whatever_order_chunks_land_in(tmp_path):
    rng = random.Random(7)
    sizes = [rng.randint(1, 3 * STEP // 4) for _ in range(40)]  # spans several hashing steps
    data = os.urandom(sum(sizes))
    part = tmp_path / "f.part"
    part.write_bytes(bytes(len(data)))
    chunks = _layout(sizes)
    hasher = PrefixHasher({str(part): chunks}, [(str(part), o) for o, _ in chunks])
    order = chunks[:]
    rng.shuffle(order)
    with open(part, "r+b") as f:
        for offset, n in order:
            os.pwrite(f.fileno(), data[offset : offset + n], offset)
            hasher.written([(str(part), offset)])
    assert hasher.digests() == {str(part): blake3(data).digest()}


def test_prefix_hasher_hashes_files_already_complete_and_empty_files(tmp_path):
    full, empty = tmp_path / "full.part", tmp_path / "empty.part"
    full.write_bytes(b"abc" * 1000)
    empty.write_bytes(b"")
    hasher = PrefixHasher({str(full): _layout([1000, 2000]), str(empty): []}, [])
    assert hasher.digests() == {str(full): blake3(b"abc" * 1000).digest(), str(empty): blake3(b"").digest()}


def test_a_tree_that_lies_about_a_file_id_is_refused_and_nothing_is_stored(tmp_path, synthetic):
    """A hostile repository names a file by one id and gives chunks of other bytes."""
    src = Cache(tmp_path / "src")
    info = src.add(synthetic, "m:v1")
    repo = tmp_path / "repo"
    src.push("m:v1", f"file://{repo}")
    tree = src.tree(info)
    victim = max(tree.files, key=lambda f: f.size)
    lie = victim._replace(file_id=blake3(b"some other file").digest())
    forged = Tree.build([lie if f is victim else f for f in tree.files])
    data = forged.encode()
    root = root_of(data)
    (repo / tree_key(root)).write_bytes(data)
    (repo / locator_key(root)).write_bytes((repo / locator_key(info.root)).read_bytes())
    (repo / ref_key("m", "forged")).write_bytes(info._replace(version="forged", root=root).encode())
    host = Cache(tmp_path / "host")
    with pytest.raises(CorruptObject, match=rf"m:forged: {victim.path} assembled from verified chunks does not hash"):
        host.pull("m:forged", f"file://{repo}")
    assert blobs_of(host) == []
    assert host.list() == []


def test_a_bad_worker_count_is_a_clear_error(tmp_path, synthetic, monkeypatch):
    published(tmp_path, synthetic, "m:v1", f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("CAS_PULL_PROCESSES", "many")
    with pytest.raises(CasError, match="CAS_PULL_PROCESSES='many' is not a number"):
        Cache(tmp_path / "host").pull("m:v1", f"file://{tmp_path / 'repo'}")


@pytest.mark.parametrize("processes", ["0", "2"])
def test_worker_processes_and_this_one_assemble_the_same_files(tmp_path, synthetic, server, token, monkeypatch,
                                                               processes):  # fmt: skip
    url, _ = server
    packed = published(tmp_path, synthetic, "m:v1", url).bytes_uploaded
    monkeypatch.setenv("CAS_PULL_PROCESSES", processes)
    host = Cache(tmp_path / "host")
    got = host.pull("m:v1", url, concurrency=4)
    assert got.bytes_fetched == packed
    assert tree_files(host.materialize("m:v1")) == tree_files(synthetic)
    assert host.verify().ok


def test_a_worker_killed_mid_pull_ends_in_a_clear_error_and_the_pull_resumes(tmp_path, minilm, server, proxy,
                                                                             token, monkeypatch):  # fmt: skip
    url, _ = server
    total = published(tmp_path, minilm, "minilm:v1", url).bytes_uploaded
    slow = proxy(url, "none", 1, delay=0.3)
    monkeypatch.setenv("CAS_PULL_PROCESSES", "1")
    host = Cache(tmp_path / "host")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            host.pull("minilm:v1", slow, concurrency=4)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: verified_chunks(host.root) >= 100, what="100 chunks verified")
    workers = _fetch_workers(os.getpid())
    assert len(workers) == 1
    os.kill(workers[0], 9)
    t.join(120)
    assert isinstance(outcome[0], CasError)
    message = str(outcome[0])
    assert (
        "a fetch worker (python -m cas.sync.fetchworker) exited with code -9 mid-pull; pull again to resume" in message
    )
    assert host.list() == []
    resumed = host.pull("minilm:v1", url)
    assert 0 < resumed.bytes_fetched < total
    assert tree_files(host.materialize("minilm:v1")) == tree_files(minilm)


def test_a_killed_pull_takes_its_workers_with_it(tmp_path, minilm, server, proxy, token):
    """Orphaned workers must not keep writing into part files that a later pull or `cas verify` owns."""
    url, _ = server
    src = Cache(tmp_path / "src")
    src.add(minilm, "minilm:v1")  # over WORKERS_MIN_BYTES: a smaller pull leaves its workers idle
    src.push("minilm:v1", url)
    stalling = proxy(url, "stall", 1)  # every pack response hangs: only the kill can end the workers
    port = int(stalling.rsplit(":", 1)[1])
    code = "import sys; from cas import Cache; Cache(sys.argv[1]).pull('minilm:v1', sys.argv[2], concurrency=4)"
    env = {**os.environ, "CAS_PULL_PROCESSES": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "host"), stalling], cwd=REPO, env=env)
    wait_until(lambda: any(_connections(w, port) for w in _fetch_workers(proc.pid)), what="a worker fetching")
    workers = _fetch_workers(proc.pid)
    proc.kill()
    proc.wait()
    # the old workers sat out CAS_STALL_TIMEOUT (30 s) and its retries; now they leave with their pull
    wait_until(lambda: not any(descendants(w) for w in workers), timeout=20, what="the workers to exit")


def _connections(pid: int, port: int) -> int:
    """Open TCP connections from a process to a local port, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for r in rows if r[9] in inodes and int(r[2].rsplit(":", 1)[1], 16) == port)


def _fetch_workers(parent: int) -> list[int]:
    """The running `python -m cas.sync.fetchworker` children of a process."""
    table = processes()
    return [p for p in descendants(parent, table) if p != parent and b"cas.sync.fetchworker" in table[p].cmdline]


LIMITED_PULL = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from cas import Cache
print(Cache(sys.argv[1]).pull("many:v1", sys.argv[2]).info.tag)
"""


@pytest.mark.parametrize("processes", ["0", "1"])
def test_a_pull_of_thousands_of_files_fits_in_256_file_descriptors(tmp_path, processes):
    src_dir = tmp_path / "many"
    rng = random.Random(5)
    for i in range(1500):
        p = src_dir / f"shard-{i // 100}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(100, 3000)))
    src = Cache(tmp_path / "src")
    src.add(src_dir, "many:v1")
    repo = f"file://{tmp_path / 'repo'}"
    src.push("many:v1", repo)
    env = {**os.environ, "CAS_PULL_PROCESSES": processes}
    out = subprocess.run([sys.executable, "-c", LIMITED_PULL, str(tmp_path / "host"), repo], cwd=REPO, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert tree_files(Cache(tmp_path / "host").materialize("many:v1")) == tree_files(src_dir)


@pytest.mark.parametrize("kind", ["fetch", "push"])
def test_workers_run_the_cas_that_started_them(tmp_path, minilm, kind):
    """A cas imported from a checkout that is not installed (put on sys.path by the program) starts its worker
    processes on that same checkout, not on whatever cas the interpreter finds by itself (here: the installed
    one). The checkout's worker leaves a mark when it runs."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "cas", checkout / "cas", ignore=shutil.ignore_patterns("__pycache__"))
    mark = tmp_path / "worker-ran"
    worker = checkout / "cas" / "sync" / f"{kind}worker.py"
    first = "from __future__ import annotations\n"
    leave_mark = f"if __name__ == '__main__':\n    open({str(mark)!r}, 'a').write('checkout\\n')\n"
    worker.write_text(worker.read_text().replace(first, first + leave_mark, 1))
    repo = f"file://{tmp_path / 'repo'}"
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import cas
assert cas.__file__.startswith(sys.argv[1])
c = cas.Cache(sys.argv[2], durable=False)
if sys.argv[4] == "fetch":
    c.pull("m:v1", sys.argv[3])
else:
    c.push(c.add(sys.argv[5], "m:v1").tag, sys.argv[3])
"""
    if kind == "fetch":
        published(tmp_path, minilm, "m:v1", repo)
    env = {**os.environ, "CAS_PULL_PROCESSES": "1", "CAS_PUSH_PROCESSES": "1"}
    env.pop("PYTHONPATH", None)
    args = [str(checkout), str(tmp_path / "host"), repo, kind, str(minilm)]  # 3 packs: a push worker gets one
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert mark.read_text().startswith("checkout\n")
