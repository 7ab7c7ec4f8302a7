"""Killing ``cas export`` or ``cas import`` at any moment leaves nothing half-visible, and the next run completes.

Kills land at seeded points: of the operation's run time measured on this machine (as in ``test_crashes``),
or, for an import reading a pipe, after a seeded number of bytes of the export file were fed to it.
Afterwards no ref names missing data, ``cas verify`` passes (it removes the dead import's temporaries),
an export file is either absent or whole, and running the operation again gives the same bytes.
"""

from __future__ import annotations

import array
import fcntl
import os
import random
import re
import signal
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from cas import Cache, CasError

from ..conftest import KILLS, REPO, tree_files, wait_until
from .test_crashes import CLI, TRIALS, Window, assert_consistent, kill_midway, kill_point, span, wait_for_point

pytestmark = pytest.mark.reliability
OPERATIONS = ("cas export", "cas export | cas import", "cas import", "cas import (pipe)")


@pytest.fixture(scope="module", autouse=True)
def kills_landed():
    """A run whose kills all came after the operation had finished would test nothing: at least half must land
    (this module's operations only: another module's count is its own business)."""
    yield
    for op in OPERATIONS:
        hits = KILLS.get(op, [])
        assert sum(hits) * 2 >= len(hits), f"only {sum(hits)} of {len(hits)} kills of {op} landed while it ran"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MB model of two weights files: long enough to export and import that a kill lands midway."""
    d = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(3)
    for name in ("a.safetensors", "b.safetensors"):
        with open(d / name, "wb") as f:
            for _ in range(8):
                f.write(rng.integers(0, 255, 16 << 20, dtype=np.uint8).tobytes())
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Cache:
    cache = Cache(tmp_path_factory.mktemp("stored") / "cache", durable=False)
    cache.add(model, "big:v1")
    return cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, stored: Cache) -> Path:
    path = tmp_path_factory.mktemp("exported") / "big.casx"
    stored.export_model("big:v1", path)
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def assert_imported_whole_or_not_at_all(cache: Cache, model: Path) -> None:
    if cache.list():  # finished before the kill: then it must be whole
        assert tree_files(cache.materialize("big:v1")) == tree_files(model)
    assert_consistent(cache)


# -- export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_span(tmp_path_factory: pytest.TempPathFactory, stored: Cache) -> Window:
    dest = tmp_path_factory.mktemp("export-span") / "big.casx"
    return span(cli("export", "big:v1", str(dest)), {**os.environ, "CAS_HOME": str(stored.root)})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_export_midway(tmp_path, model, stored, export_span, trial):
    """The export file appears only whole (a temporary is renamed); the cache is left as it was."""
    dest = tmp_path / "big.casx"
    env = {**os.environ, "CAS_HOME": str(stored.root)}
    kill_midway("cas export", cli("export", "big:v1", str(dest)), env, export_span, trial, salt=400)
    if dest.exists():  # finished before the kill: then it must be whole
        assert Cache(tmp_path / "check").import_model(dest).info.tag == "big:v1"
    assert stored.verify().ok
    stored.export_model("big:v1", dest)
    host = Cache(tmp_path / "host")
    host.import_model(dest)
    assert tree_files(host.materialize("big:v1")) == tree_files(model)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_export_writing_to_a_pipe(tmp_path, model, stored, export_span, trial):
    """An importer reading from a killed exporter refuses the truncated stream and stores nothing."""
    host = Cache(tmp_path / "host")
    export = subprocess.Popen(cli("--home", str(stored.root), "export", "big:v1", "-"), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert export.stdout.read(6) == b"ready\n"  # type: ignore[union-attr]
    importer = subprocess.Popen([sys.executable, "-m", "cas", "--home", str(host.root), "import", "-"], cwd=REPO,
                                stdin=export.stdout, stderr=subprocess.PIPE, text=True)  # fmt: skip
    export.stdout.close()  # type: ignore[union-attr]
    KILLS.setdefault("cas export | cas import", []).append(wait_for_point(export, export_span, kill_point(trial, 500)))
    export.send_signal(signal.SIGKILL)
    export.wait()
    _, err = importer.communicate(timeout=120)
    if importer.returncode != 0:
        assert re.match(r"cas: error: stdin (is empty|is not a (whole )?cas export file)", err), err
        assert host.list() == []
    assert_imported_whole_or_not_at_all(host, model)
    host.import_model(stored_export(tmp_path, stored))
    assert tree_files(host.materialize("big:v1")) == tree_files(model)


def stored_export(tmp_path: Path, stored: Cache) -> Path:
    path = tmp_path / "again.casx"
    stored.export_model("big:v1", path)
    return path


# -- import ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def import_span(tmp_path_factory: pytest.TempPathFactory, exported: Path) -> Window:
    home = tmp_path_factory.mktemp("import-span")
    return span(cli("import", str(exported)), {**os.environ, "CAS_HOME": str(home)})


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_import_midway(tmp_path, model, exported, import_span, trial):
    cache = Cache(tmp_path / "cache")
    env = {**os.environ, "CAS_HOME": str(cache.root)}
    kill_midway("cas import", cli("import", str(exported)), env, import_span, trial, salt=600)
    assert_imported_whole_or_not_at_all(cache, model)
    cache.import_model(exported)
    assert tree_files(cache.materialize("big:v1")) == tree_files(model)
    assert cache.verify().ok


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_import_after_a_seeded_number_of_bytes(tmp_path, model, exported, trial):
    """Fed through a pipe up to a seeded byte (the end marker included, so some kills come before the check
    of the end and before any publishing), the importer is killed once it has read them."""
    cache = Cache(tmp_path / "cache")
    data = exported.read_bytes()
    upto = random.Random(700 + trial).randrange(1, len(data))
    proc = subprocess.Popen(cli("--home", str(cache.root), "import", "-"), cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    proc.stdin.write(data[:upto])  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    wait_until(lambda: unread(proc.stdin) == 0, timeout=60, what="the import to read what it was fed")
    KILLS.setdefault("cas import (pipe)", []).append(proc.poll() is None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close()  # type: ignore[union-attr]
    assert cache.list() == []  # it never saw the end of the stream: nothing may be visible,
    assert not [p for p in (cache.root / "blobs").rglob("*") if p.is_file()]  # no blob published before the check
    assert_consistent(cache)
    with pytest.raises(CasError, match="truncated|not a cas export file"):
        cache.import_model(_prefix(tmp_path, data, upto))
    cache.import_model(exported)
    assert tree_files(cache.materialize("big:v1")) == tree_files(model)


def unread(pipe) -> int:
    """Bytes written to a pipe that its reader has not taken yet (FIONREAD works on either end on Linux)."""
    n = array.array("i", [0])
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, n)
    return n[0]


def _prefix(tmp_path: Path, data: bytes, upto: int) -> Path:
    path = tmp_path / "prefix.casx"
    path.write_bytes(data[:upto])
    return path
