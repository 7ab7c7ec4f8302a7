"""Commands on a cache this process cannot write: a read-only mount, and another user's cache.

Commands that only read (du, verify --no-repair, export, list, show,
materialize of a built snapshot) work and change nothing; those that must
write (gc, verify, rm, add, pull, materialize of an unbuilt one) end in one
line naming what to run as the cache's owner.  Every command runs through
the real CLI, on a real read-only bind mount (``unshare -m``, as root) or as
``nobody`` (``setpriv``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cas import Cache

from .conftest import IN_CI, REPO, tree_files
from .test_permissions import NOBODY, as_user, listing

PYTHON_API = """
import sys
from cas import Cache
cache = Cache(sys.argv[1])
print(cache.du().versions[0].info.tag, cache.verify(repair=False).ok, cache.export_model("m:v1", sys.argv[2]).info.tag)
"""


def need(condition: bool, what: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{what}: CI runs as root with mount namespaces")
        pytest.skip(what)


@pytest.fixture
def filled(tmp_path) -> tuple[Path, Path, str]:
    """A cache with ``m:v1`` materialized and ``u:v1`` stored without a snapshot; a repository holding ``r:v1``."""
    need(os.geteuid() == 0, "a read-only mount and another user need root")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "w.bin").write_bytes(os.urandom(300_000))
    (model / "sub" / "c.json").write_text("{}")
    cache = Cache(tmp_path / "cache")
    cache.add(model, "m:v1")
    cache.materialize("m:v1")
    cache.add(model / "sub", "u:v1")
    url = (tmp_path / "repo").as_uri()
    other = Cache(tmp_path / "other")
    other.add(model / "w.bin", "r:v1")
    other.push("r:v1", url)
    for d in (tmp_path, model, model / "sub", tmp_path / "repo"):
        d.chmod(0o755)  # nobody reads the model and the repository, and writes to tmp_path/out
    (tmp_path / "out").mkdir(mode=0o777)
    (tmp_path / "out").chmod(0o777)
    cache.chunk_index().close()  # now, not whenever this process collects it: closing checkpoints the index
    return cache.root, model, url


def read_only(cache: Path) -> list[str]:
    """A prefix running a command with ``cache`` bind-mounted read-only over itself, in a namespace of its own."""
    need(subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0,
         "this machine does not allow mount namespaces (unshare -m)")  # fmt: skip
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{cache}" "{cache}" && exec "$@"', "sh"]


def as_nobody(cache: Path) -> list[str]:
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    return as_user(NOBODY, NOBODY)


def cas(prefix: list[str], home: Path, *args: str, text: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAS_HOME": str(home)}
    return subprocess.run([*prefix, sys.executable, "-m", "cas", *args], capture_output=True, text=text, env=env,
                          cwd=REPO, timeout=300)  # fmt: skip


@pytest.mark.parametrize("runner", [read_only, as_nobody])
def test_commands_that_only_read_work_and_write_nothing(filled, tmp_path, runner):
    home, model, _ = filled
    prefix = runner(home)
    before = listing(home)
    out = tmp_path / "out"
    for args in (["du", "--json"], ["verify", "--no-repair", "--json"], ["export", "m:v1", str(out / "m.cas")],
                 ["list", "--json"], ["show", "m:v1", "--json"], ["materialize", "m:v1"]):  # fmt: skip
        done = cas(prefix, home, *args)
        assert done.returncode == 0 and done.stderr.count("\n") <= 1, f"cas {' '.join(args)}: {done.stderr}"
        assert "Traceback" not in done.stderr and "error" not in done.stderr, done.stderr
    assert tree_files(Path(done.stdout.strip())) == tree_files(model)
    streamed = cas(prefix, home, "export", "m:v1", "-", text=False)
    assert streamed.returncode == 0 and streamed.stdout == (out / "m.cas").read_bytes(), streamed.stderr
    again = Cache(tmp_path / "again")
    assert again.import_model(out / "m.cas").info.tag == "m:v1"
    assert tree_files(again.materialize("m:v1")) == tree_files(model)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    api = subprocess.run([*prefix, sys.executable, "-c", PYTHON_API, str(home), str(out / "api.cas")], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert api.returncode == 0 and api.stdout.split() == ["u:v1", "True", "m:v1"], api.stderr
    assert listing(home) == before  # no lock file, chunk index, tmp folder or usage record made


@pytest.mark.parametrize("runner, why", [(read_only, "Read-only file system"), (as_nobody, "Permission denied")])
def test_commands_that_must_write_end_in_one_line_naming_what_to_run(filled, runner, why):
    home, model, url = filled
    prefix = runner(home)
    before = listing(home)
    commands = {
        ("gc",): "run 'cas gc' as the cache's owner",
        ("verify",): "'cas verify --no-repair' only checks",
        ("rm", "m:v1"): "run 'cas rm m:v1' as the cache's owner",
        ("add", str(model), "n:v1"): "run 'cas add' as the cache's owner",
        ("pull", "r:v1", "--remote", url): "run 'cas pull r:v1' as the cache's owner",
        ("materialize", "u:v1"): "run 'cas materialize u:v1' as the cache's owner",
    }
    for args, hint in commands.items():
        done = cas(prefix, home, *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, f"cas {' '.join(args)}: {done.stderr}"
        line = f"cas: error: the cache at {home} is not writable by this process: {why}"
        assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, f"cas {' '.join(args)}: {done.stderr}"
        assert hint in done.stderr, done.stderr
    assert listing(home) == before
    assert json.loads(cas([], home, "list", "--json").stdout)
