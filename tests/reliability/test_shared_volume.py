"""A cache shared by processes that cannot see each other's PIDs (two containers on one volume): liveness of
a temporary comes from a lock its writer holds, so a gc in another PID namespace (``unshare``) leaves a
``create()`` in progress alone and still removes what a killed writer left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cas import Cache

from ..conftest import REPO, cas_cli, missing, tree_files

pytestmark = pytest.mark.reliability

WRITER = textwrap.dedent("""
    import sys
    from cas import Cache
    with Cache(sys.argv[1]).create("made") as staging:
        (staging.path / "weights.bin").write_bytes(b"w" * 100_000)
        print(staging.path, flush=True)
        sys.stdin.readline()  # the test runs a gc from another PID namespace meanwhile
        (staging.path / "config.json").write_text("{}")
    print("stored", flush=True)
""")


def gc_in_another_pid_namespace(home) -> subprocess.CompletedProcess[str]:
    """`cas gc` as a container sharing the volume would run it: in a PID namespace of its own."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "cas", "gc"]
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        missing("unshare --pid (root, util-linux)")
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "CAS_HOME": str(home)}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def start_writer(home) -> tuple[subprocess.Popen, str]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    return writer, writer.stdout.readline().strip()


def test_a_gc_in_another_pid_namespace_leaves_a_create_in_progress_alone(tmp_path):
    home = tmp_path / "cache"
    writer, staging = start_writer(home)
    out = gc_in_another_pid_namespace(home)
    assert out.returncode == 0, out.stderr
    assert os.path.isdir(staging), f"the gc removed a live create(): {out.stdout}"
    answer, _ = writer.communicate("\n", timeout=60)
    assert writer.returncode == 0 and answer.strip() == "stored"
    (info,) = Cache(home).list()
    assert tree_files(Cache(home).materialize(info)) == {"weights.bin": b"w" * 100_000, "config.json": b"{}"}


def test_a_gc_in_another_pid_namespace_removes_what_a_killed_writer_left(tmp_path):
    home = tmp_path / "cache"
    writer, staging = start_writer(home)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    out = gc_in_another_pid_namespace(home)
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(staging)
    assert not [n for n in os.listdir(home / "locks") if n.startswith("owner-")]  # its owner lock went too
    assert cas_cli("verify", home=home).returncode == 0
