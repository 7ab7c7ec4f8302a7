"""Shared fixtures: a fresh cache per test, the packaged MiniLM model, synthetic models, servers."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import Cache, ModelInfo, PushStats
from tests.support import synth
from tests.support.procs import descendants, free_port, processes, start, stop  # noqa: F401 - for the tests
from tests.support.registry import registry_binary, start_registry
from tests.support.servers import S3_CREDENTIALS, make_bucket, nginx_binary, start_nginx, start_s3
from tests.support.synth import minilm_path

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module: str):
    """Import what a test needs from the ``test`` extra: missing, it skips here and fails under CI (CI=true)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} (pip install -e '.[test]'; bash dev test does it)")


def missing(what: str) -> None:
    """A server or package the test needs is not here: CI must have it (it fails), elsewhere the test skips."""
    if IN_CI:
        pytest.fail(f"{what} is missing: CI must install everything the tests need")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 files (about 90 MB) as shipped by its package."""
    path = minilm_path()
    assert (path / "model.safetensors").stat().st_size > 80_000_000
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MB synthetic safetensors model directory."""
    d = tmp_path_factory.mktemp("synthetic")
    return synth.write_model_dir(d / "base", synth.model_tensors(seed=1, total_bytes=24 << 20))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    """A 24 MB synthetic model and a fine-tune of 10% of its tensors."""
    d = tmp_path_factory.mktemp("tuned")
    base = synth.model_tensors(seed=31, total_bytes=24 << 20, layer_bytes=1 << 20)
    tuned = synth.fine_tune(base, 0.10, seed=32)
    changed = sum(a.nbytes for (_, a), (_, b) in zip(base, tuned) if a.tobytes() != b.tobytes())
    return {"base": synth.write_model_dir(d / "base", base), "tuned": synth.write_model_dir(d / "tuned", tuned),
            "changed": changed}  # fmt: skip


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative POSIX path, with its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def cas_cli(
    *args: str, home: Path, check: bool = True, env: dict | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``cas`` command line in a subprocess (``preexec`` runs in the child first: resource limits)."""
    env = {**(env or os.environ), "CAS_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "cas", *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO, preexec_fn=preexec)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# A child's half of start_together: past its imports, it says so and waits for the word.
READY = 'print("ready", flush=True); sys.stdin.readline()'


# Per crashed operation, whether each SIGKILL landed while it ran; the summary at the end of a run shows them.
KILLS: dict[str, list[bool]] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if KILLS:
        landed = ", ".join(f"{op} {sum(hits)} of {len(hits)}" for op, hits in KILLS.items())
        terminalreporter.write_line(f"SIGKILLs that landed while the operation ran: {landed}")


def start_together(cmds: list[list[str]], env: dict[str, str] | None = None, *,
                   stderr: int | None = None) -> list[subprocess.Popen]:  # fmt: skip
    """Start processes that each run READY, and release them at once when all are ready: a real race.

    A start time on the clock is no barrier on a loaded machine, where a slow
    interpreter start can make a "race" run one process after another.
    """
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                              text=True) for cmd in cmds]  # fmt: skip
    for p in procs:
        line = p.stdout.readline()  # type: ignore[union-attr]
        assert line == "ready\n", f"a racer failed to start: {line!r}"
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    return procs


# -- servers: `cas serve` and the fault-injecting proxy as subprocesses ---------------------

TOKEN = "test-token"


def wait_until(condition, timeout: float = 60, what: str = "the condition") -> None:
    """Poll ``condition`` until true; fail the test (never carry on silently) when it does not come."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def verified_chunks(home: Path) -> int:
    """How many chunks the pulls under way in a cache have verified and written (a line each in their logs)."""
    return sum(p.read_text().count("\n") for p in (home / "tmp" / "pull").glob("*/*.done"))


def published(tmp_path: Path, model: Path, tag: str, url: str) -> PushStats:
    """``model`` added to a fresh source cache as ``tag`` and pushed to ``url``: how most sync tests begin."""
    src = Cache(tmp_path / "src")
    src.add(model, tag)
    return src.push(tag, url)


BOUNDED_PULL = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway read fails here, not on the test machine
from cas import Cache, CasError
try:
    Cache(sys.argv[1]).pull(sys.argv[2], sys.argv[3])
    error = None
except CasError as e:
    error = str(e)
from tests.support.procs import peak_mb
print(json.dumps({"error": error, "peak_mb": peak_mb()}))
"""


def pull_in_child(home: Path, tag: str, url: str, env: dict[str, str] | None = None, timeout: float = 120) -> dict:
    """Pull in a child process held to 4 GB of address space: its CasError message (or None) and peak RSS in MB."""
    out = subprocess.run([sys.executable, "-c", BOUNDED_PULL, str(home), tag, url], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def edit_largest_blob(cache: Cache, info: ModelInfo) -> None:
    """Write 64 bytes into the middle of a model's largest blob, in place (as an edit through a hardlink would)."""
    big = max(cache.tree(info).files, key=lambda f: f.size)
    blob = cache.objects.blob_of(big)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(big.size // 2)
        f.write(b"\xff" * 64)


def blobs_of(cache: Cache) -> list[Path]:
    """Every blob file stored in a cache."""
    return sorted(p for p in (cache.root / "blobs").rglob("*") if p.is_file())


@pytest.fixture
def server(tmp_path):
    """`cas serve` on a free port with a write token; yields (url, repository folder)."""
    repo = tmp_path / "repo"
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cas", "serve", str(repo), "--port", str(port), "--token-file", str(token_file)]
    proc = start(cmd, url + "/")
    yield url, repo
    stop(proc)


@pytest.fixture
def proxy():
    """Start fault-injecting proxies in front of a server: proxy(upstream, fault, every=1, delay=0) -> url."""
    procs = []

    def make(upstream: str, fault: str = "none", every: int = 1, delay: float = 0.0, limit: int = 0,
             put_delay: float = 0.0, on_relist: str = "") -> str:  # fmt: skip
        port = free_port()
        cmd = [sys.executable, str(REPO / "tests" / "faultproxy.py"), upstream, str(port), "--fault", fault,
               "--every", str(every), "--delay", str(delay), "--limit", str(limit),
               "--put-delay", str(put_delay), "--on-relist", on_relist]  # fmt: skip
        procs.append(start(cmd, f"http://127.0.0.1:{port}/_stats"))
        return f"http://127.0.0.1:{port}"

    yield make
    for p in procs:
        stop(p)


def stats(proxy_url: str) -> dict:
    return json.loads(urllib.request.urlopen(proxy_url + "/_stats").read())


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("CAS_TOKEN", TOKEN)


@pytest.fixture
def registry(tmp_path):
    """Start the CNCF distribution registry: registry(auth="none"|"basic"|"token") -> (base URL, token service)."""
    if registry_binary() is None:
        missing("docker-registry (apt-get install docker-registry; bash dev test does it as root)")
    require("bcrypt")  # the htpasswd file
    require("jwt")  # the token service's tokens
    started = []

    def make(auth: str = "none"):
        work = tmp_path / f"registry-{len(started)}"
        work.mkdir()
        proc, url, tokens = start_registry(work, auth)
        started.append((proc, tokens))
        return url, tokens

    yield make
    for proc, tokens in started:
        stop(proc)
        if tokens:
            tokens.close()


@pytest.fixture
def nginx(tmp_path):
    """Start nginx serving repository folders read-only: nginx(folder) -> URL."""
    if nginx_binary() is None:
        missing("nginx (apt-get install nginx; bash dev test does it as root)")
    started = []

    def make(folder: Path) -> str:
        proc, url = start_nginx(folder, tmp_path / f"nginx-{len(started)}")
        started.append(proc)
        return url

    yield make
    for proc in started:
        stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server, one for the session: its endpoint URL."""
    require("moto.server")
    proc, endpoint = start_s3(tmp_path_factory.mktemp("s3"))
    yield endpoint
    stop(proc)


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """A fresh bucket on the S3 server and the AWS variables that reach it: the repository URL s3://BUCKET/PREFIX."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    bucket = f"cas-{os.urandom(6).hex()}"
    make_bucket(s3_server, bucket)
    return f"s3://{bucket}/models"
