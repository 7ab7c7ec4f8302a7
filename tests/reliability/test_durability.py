"""Power loss: every name cas publishes is durable before anything that refers to it is written.

A name lives in its directory, and a directory made on the way lives in its parent: until both are
flushed a power cut can drop them, whatever was fsynced inside.  ext4 and XFS happen to commit such
entries in order; btrfs and others can keep a ref and lose the tree or pack it names.  So the real
command line runs under strace, and its trace must show, before the ref is published:

- for every directory made on the way to a published name, an fsync of its parent (or a syncfs of the
  filesystem) after the mkdir;
- for every name published (blob, tree, pack, index, locator, listing), an fsync of its directory (or a
  syncfs) after the link or rename;

and after it, an fsync of the ref's own directory.  Temporaries (``tmp/``, ``.tmp/``) and the ``.latest``
hint (written before the ref on purpose, see ``cas.local.refs``) are not names anything relies on.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import TOKEN, cas_cli, missing
from tests.support.procs import descendants, free_port, start, stop

CALLS = "mkdir,mkdirat,fsync,fdatasync,syncfs,link,linkat,rename,renameat,renameat2"
MAKE = {"mkdir", "mkdirat"}
NAME = {"link", "linkat", "rename", "renameat", "renameat2"}
FLUSH = {"fsync", "fdatasync"}
HINTS = {".latest"}


class Call(NamedTuple):
    """One successful system call: its paths (mkdir: the directory; link, rename: source and destination;
    fsync, syncfs: the file), and the trace lines where it started and returned."""

    name: str
    paths: tuple[str, ...]
    start: int
    end: int


@pytest.fixture
def strace(tmp_path: Path) -> list[str]:
    """The strace command line that records this module's calls (``-y``: every fd with its path)."""
    if shutil.which("strace") is None:
        missing("strace (apt-get install strace; bash dev test does it as root)")
    probe = subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        missing(f"a working strace ({probe.stderr.strip()[:200]})")
    return ["strace", "-f", "-y", "-qq", "-e", f"trace={CALLS}", "-o"]


def model(tmp_path: Path) -> Path:
    """A small model: several files, so blobs land in several new ``blobs/<ab>/`` folders."""
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    for i in range(6):
        (src / ("sub" if i % 2 else "") / f"f{i}.bin").write_bytes(os.urandom(50_000 + i))
    return src


def test_add_flushes_every_new_directory_before_the_ref(tmp_path: Path, strace: list[str]) -> None:
    home, trace = tmp_path / "cache", tmp_path / "add.trace"
    cas_traced(strace, trace, "add", str(model(tmp_path)), "m:v1", home=home)
    assert_durable_order(parse(trace), home, home / "refs/m/v1")


def test_push_to_a_folder_flushes_every_new_directory_before_the_ref(tmp_path: Path, strace: list[str]) -> None:
    home, repo, trace = tmp_path / "cache", tmp_path / "repo", tmp_path / "push.trace"
    cas_cli("add", str(model(tmp_path)), "m:v1", home=home)
    cas_traced(strace, trace, "push", "m:v1", "--remote", f"file://{repo}", home=home)
    assert_durable_order(parse(trace), repo, repo / "refs/m/v1")


def test_push_to_cas_serve_flushes_every_new_directory_before_the_ref(tmp_path: Path, strace: list[str]) -> None:
    home, repo, trace = tmp_path / "cache", tmp_path / "repo", tmp_path / "serve.trace"
    cas_cli("add", str(model(tmp_path)), "m:v1", home=home)
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    url = f"http://127.0.0.1:{port}"
    serve = ["-m", "cas", "serve", str(repo), "--port", str(port), "--token-file", str(tmp_path / "token")]
    proc = start([*strace, str(trace), sys.executable, *serve], url + "/")
    try:
        cas_cli("push", "m:v1", "--remote", url, home=home, env={**os.environ, "CAS_TOKEN": TOKEN})
    finally:
        for pid in descendants(proc.pid)[1:]:  # the server under strace: strace finishes its trace and exits with it
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=30)
        stop(proc)
    assert_durable_order(parse(trace), repo, repo / "refs/m/v1")


def cas_traced(strace: list[str], trace: Path, *args: str, home: Path) -> None:
    """The real ``cas`` command under strace."""
    env = {**os.environ, "CAS_HOME": str(home), "CAS_DURABLE": "1"}
    cmd = [*strace, str(trace), sys.executable, "-m", "cas", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, f"cas {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"


def assert_durable_order(calls: list[Call], root: Path, ref: Path) -> None:
    problems = durability_problems(calls, str(root), str(ref))
    assert not problems, f"{len(problems)} names not durable in time:\n" + "\n".join(problems[:20])


def durability_problems(calls: list[Call], root: str, ref: str) -> list[str]:
    """Where the trace breaks the rule of this module, one line each."""
    commits = [c for c in calls if c.name in NAME and c.paths[-1] == ref]
    assert commits, f"the trace never shows {ref} being published"
    commit = commits[0]
    before = [c for c in calls if c.end < commit.start]
    names = [c for c in before if c.name in NAME and _named(c.paths[-1], root) and c.paths[-1] != ref]
    leading = {os.path.dirname(c.paths[-1]) for c in names} | {os.path.dirname(ref)}
    made = [c for c in before if c.name in MAKE and _inside(c.paths[0], root) and _leads(c.paths[0], leading)]
    problems = []
    for c in made:
        if not _flushed(calls, os.path.dirname(c.paths[0]), c.end, commit.start, root):
            problems.append(f"{c.name} {c.paths[0]} (line {c.end + 1}): its parent is not flushed before the ref")
    for c in names:
        if not _flushed(calls, os.path.dirname(c.paths[-1]), c.end, commit.start, root):
            problems.append(f"{c.name} {c.paths[-1]} (line {c.end + 1}): its directory is not flushed before the ref")
    if not _flushed(calls, os.path.dirname(ref), commit.end, math.inf, root):
        problems.append(f"the ref {ref} (line {commit.end + 1}): its directory is never flushed after it")
    return problems


def _inside(path: str, root: str) -> bool:
    """Strictly inside ``root``: the cache or repository folder itself is the user's (``CAS_HOME``, the
    folder given to ``cas serve``)."""
    return path.startswith(root + "/")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _named(path: str, root: str) -> bool:
    """A name readers rely on: under ``root``, not a temporary, not a hint."""
    rel = os.path.relpath(path, root).split("/")
    return _under(path, root) and rel[0] not in ("tmp", ".tmp") and rel[-1] not in HINTS


def _leads(directory: str, leading: set[str]) -> bool:
    """``directory`` is on the way to one of ``leading``."""
    return any(_under(d, directory) for d in leading)


def _flushed(calls: list[Call], directory: str, after: int, before: float, root: str) -> bool:
    """An fsync of ``directory`` (or a syncfs of the filesystem holding ``root``) that started after line
    ``after`` and returned before line ``before``."""
    return any(after < c.start and c.end < before
               and ((c.name in FLUSH and c.paths[0] == directory) or (c.name == "syncfs" and _under(c.paths[0], root)))
               for c in calls)  # fmt: skip


# -- reading strace's output --------------------------------------------------------------------

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD = re.compile(r"^-?\d+<([^>]*)>")
_PATH = re.compile(r'(?:(?:AT_FDCWD|\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')


def parse(trace: Path) -> list[Call]:
    """The successful calls of a trace (``strace -f -y``), a call split across lines by another thread's
    joined up again."""
    pending: dict[str, tuple[str, int]] = {}
    calls = []
    for i, line in enumerate(trace.read_text().splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        pid, text = m.groups()
        start = i
        if text.endswith("<unfinished ...>"):
            pending[pid] = (text.removesuffix("<unfinished ...>"), i)
            continue
        if r := _RESUMED.match(text):
            head, start = pending.pop(pid, ("", i))
            text = head + r.group(2)
        call = _call(text, start, i)
        if call is not None:
            calls.append(call)
    return calls


def _call(text: str, start: int, end: int) -> Call | None:
    m = _CALL.match(text)
    if not m or m.group(3) != "0":
        return None
    name, args = m.group(1), m.group(2)
    if name in FLUSH or name == "syncfs":
        fd = _FD.match(args)
        return Call(name, (fd.group(1),), start, end) if fd else None
    paths = tuple(s if s.startswith("/") else os.path.join(d or "", s) for d, s in _PATH.findall(args))
    return Call(name, paths, start, end)
