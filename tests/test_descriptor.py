"""The descriptor: lazy, once-per-process resolution for services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import descriptor
from cas import Cache, NotFound

from .conftest import READY, REPO, published, start_together, tree_files


def service_class(tag: str, cache: Cache):
    class Service:
        model = descriptor.Model(tag, cache=cache)

    return Service


def test_class_access_returns_the_descriptor(cache):
    Service = service_class("m:latest", cache)
    assert isinstance(Service.model, descriptor.Model)
    assert Service.model.tag == "m:latest"
    assert descriptor.Model("m").tag == "m:latest"


def test_instance_access_resolves_to_a_concrete_materialized_model(cache, minilm):
    info = cache.add(minilm, "minilm")
    Service = service_class("minilm:latest", cache)
    m = Service().model
    assert isinstance(m, descriptor.ResolvedModel)
    assert m.tag == info.tag and not m.tag.endswith(":latest")
    assert m.root == info.root and m.info == info
    assert tree_files(m.path) == tree_files(minilm)
    assert os.fspath(m) == str(m.path)
    assert m.path_of("1_Pooling/config.json").read_bytes() == (minilm / "1_Pooling/config.json").read_bytes()


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_path_of_refuses_paths_outside_the_model(cache, synthetic, bad):
    cache.add(synthetic, "m:v1")
    m = service_class("m:v1", cache)().model
    with pytest.raises(ValueError, match="m:v1"):
        m.path_of(bad)


def test_path_of_a_file_not_in_the_model(cache, synthetic):
    cache.add(synthetic, "m:v1")
    m = service_class("m:v1", cache)().model
    with pytest.raises(FileNotFoundError, match="not a file of model m:v1"):
        m.path_of("nope.bin")


def test_later_reads_are_plain_attribute_reads(cache, synthetic):
    cache.add(synthetic, "m:v1")
    s = service_class("m:v1", cache)()
    first = s.model
    assert s.__dict__["model"] is first
    assert s.model is first


def test_every_instance_sees_the_same_model_even_after_a_new_version(cache, synthetic, minilm):
    cache.add(synthetic, "m")
    Service = service_class("m:latest", cache)
    a = Service().model
    cache.add(minilm, "m")  # a newer version appears while the process runs
    b = Service().model
    assert a is b
    assert cache.get("m:latest").root != a.root


def test_a_failed_resolution_is_retried_on_next_access(cache, synthetic):
    Service = service_class("m:latest", cache)
    with pytest.raises(NotFound):
        Service().model
    cache.add(synthetic, "m")
    assert Service().model.tag == cache.get("m").tag


def test_missing_model_error_names_tag_cache_and_remedy(cache):
    class Classifier:
        model = descriptor.Model("sentiment:latest", cache=cache)

    with pytest.raises(NotFound) as e:
        Classifier().model
    msg = str(e.value)
    assert "Classifier.model" in msg and "sentiment:latest" in msg
    assert str(cache.root) in msg and "cas add" in msg and "CAS_REMOTE" in msg


def test_invalid_tag_fails_at_class_definition():
    with pytest.raises(ValueError, match="lower-case"):

        class Bad:
            model = descriptor.Model("Not A Tag")


def test_default_cache_follows_cas_home(tmp_path, synthetic, monkeypatch):
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    Cache().add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:v1")

    assert Service().model.path.is_relative_to(tmp_path / "home")


def test_cache_may_be_given_as_a_path(tmp_path, synthetic):
    Cache(tmp_path / "c").add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:v1", cache=tmp_path / "c")

    assert Service().model.path.is_relative_to(tmp_path / "c")


def test_slots_classes_work_without_caching_in_the_instance(cache, synthetic):
    cache.add(synthetic, "m:v1")

    class Slotted:
        __slots__ = ()
        model = descriptor.Model("m:v1", cache=cache)

    assert Slotted().model is Slotted().model


def test_threads_racing_on_first_access_resolve_once(cache, minilm):
    cache.add(minilm, "m:v1")
    calls = []

    class CountingCache(Cache):
        def get(self, tag):
            calls.append(tag)
            return super().get(tag)

    Service = service_class("m:v1", CountingCache(cache.root))
    barrier = threading.Barrier(16)
    results = []

    def worker():
        barrier.wait()
        results.append(Service().model)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and all(r is results[0] for r in results)
    assert [str(c) for c in calls] == ["m:v1"]


RACER = """
import json, sys, time, descriptor
from cas import Cache
class Service:
    model = descriptor.Model("minilm:latest", cache=Cache(sys.argv[1]))
{READY}
m = Service().model
print(json.dumps({"path": str(m.path), "tag": m.tag, "ino": m.path.stat().st_ino}))
""".replace("{READY}", READY)


def test_processes_racing_materialize_once_and_all_get_the_complete_snapshot(cache, minilm):
    cache.add(minilm, "minilm")
    procs = start_together([[sys.executable, "-c", RACER, str(cache.root)]] * 8)
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(json.loads(out))
    assert len({o["path"] for o in outs}) == 1 and len({o["ino"] for o in outs}) == 1
    snapshots = list((cache.root / "snapshots").iterdir())
    assert [s.name for s in snapshots] == [cache.get("minilm").root]  # one snapshot, no leftover staging
    assert tree_files(Path(outs[0]["path"])) == tree_files(minilm)


def test_models_of_lists_a_class_dependencies_including_inherited():
    class Base:
        encoder = descriptor.Model("encoder:v1")
        plain = 3

    class Service(Base):
        classifier = descriptor.Model("classifier:latest")

    class Override(Service):
        encoder = None

    assert {k: v.tag for k, v in descriptor.models_of(Service).items()} == {
        "encoder": "encoder:v1",
        "classifier": "classifier:latest",
    }
    assert list(descriptor.models_of(Service())) == ["encoder", "classifier"]
    assert list(descriptor.models_of(Override)) == ["classifier"]


def test_prefetch_resolves_every_model(cache, synthetic, minilm):
    cache.add(synthetic, "a:v1")
    cache.add(minilm, "b:v1")

    class Service:
        a = descriptor.Model("a:v1", cache=cache)
        b = descriptor.Model("b:v1", cache=cache)

    resolved = descriptor.prefetch(Service)
    assert {k: v.tag for k, v in resolved.items()} == {"a": "a:v1", "b": "b:v1"}
    s = Service()
    assert s.a is resolved["a"] and s.b is resolved["b"]
    assert descriptor.prefetch(object) == {}


def test_importing_descriptor_loads_no_network_compression_or_lock_library():
    code = (
        "import sys, descriptor; "
        "print([m for m in ('aiohttp', 'zstandard', 'portalocker', 'tqdm', 'pyfastcdc', 'botocore', 'aiobotocore')\n"
        "       if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_warm_first_access_loads_no_lock_or_compression_library(cache, synthetic):
    cache.add(synthetic, "m:v1")
    cache.materialize("m:v1")
    code = (
        "import sys, descriptor\n"
        "from cas import Cache\n"
        f"class S:\n    model = descriptor.Model('m:v1', cache=Cache({str(cache.root)!r}))\n"
        "S().model\n"
        "print([m for m in ('aiohttp', 'zstandard', 'portalocker', 'pyfastcdc', 'blake3', 'botocore', 'aiobotocore')\n"
        "       if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_removal_right_after_the_snapshot_is_built_leaves_the_service_its_files(tmp_path, synthetic):
    """The descriptor leases a version before it materializes it: a `cas rm` that lands the moment the snapshot
    is built (here, run from inside materialize) finds it leased and leaves it, so the path handed to the
    service holds the model."""
    home = tmp_path / "cache"

    class RemovedAtOnce(Cache):
        def materialize(self, tag, **kwargs):  # type: ignore[no-untyped-def]
            path = super().materialize(tag, **kwargs)
            subprocess.run([sys.executable, "-m", "cas", "--home", str(home), "rm", "m:v1"], check=True,
                           capture_output=True, cwd=REPO)  # fmt: skip
            return path

    cache = RemovedAtOnce(home)
    cache.add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:v1", cache=cache)

    resolved = Service().model
    assert cache.list() == []  # the ref went
    assert tree_files(resolved.path) == tree_files(synthetic)  # the leased snapshot stayed


SERVICE = """
import logging, sys
if sys.argv[1] == "logging":
    logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
import descriptor

class Service:
    model = descriptor.Model("m:latest", refresh=sys.argv[1] == "refresh")

print(Service().model.tag)
"""


def run_service(home: Path, url: str, how: str = "plain", **env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAS_HOME": str(home), "CAS_REMOTE": url, **env}
    out = subprocess.run([sys.executable, "-c", SERVICE, how], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_a_service_s_first_access_says_what_it_pulls_and_a_warm_one_says_nothing(tmp_path, synthetic, server, token):
    """A pull on first access can take minutes: the service's stderr shows it starting and ending (as
    huggingface_hub's progress bars do); a warm start prints nothing."""
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    first = run_service(tmp_path / "host", url)
    assert first.stdout.strip() == "m:v1"
    lines = first.stderr.splitlines()
    assert lines[0] == f"cas: pulling m:latest from {url} into the cache at {tmp_path / 'host'}", lines
    assert lines[-1].startswith(f"cas: pulled m:v1 from {url} in ") and " fetched)" in lines[-1], lines
    assert run_service(tmp_path / "host", url).stderr == ""


def test_a_service_that_set_up_logging_gets_the_notes_as_records_of_the_cas_logger(tmp_path, synthetic, server, token):
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    out = run_service(tmp_path / "host", url, "logging")
    notes = [line for line in out.stderr.splitlines() if line.startswith("LOG cas ")]
    assert notes[0] == f"LOG cas INFO pulling m:latest from {url} into the cache at {tmp_path / 'host'}"
    assert notes[-1].startswith(f"LOG cas INFO pulled m:v1 from {url}")
    assert not [line for line in out.stderr.splitlines() if line.startswith("cas: ")]  # not printed twice


def test_cas_progress_0_keeps_a_service_quiet(tmp_path, synthetic, server, token):
    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    out = run_service(tmp_path / "host", url, CAS_PROGRESS="0")
    assert out.stdout.strip() == "m:v1" and out.stderr == ""
    assert "cas: pulled m:v1" in run_service(tmp_path / "other", url).stderr  # the same first access, unmuted


def test_a_refreshing_service_says_nothing_unless_a_newer_version_moves(tmp_path, tuned, server, token):
    """refresh=True asks the repository at every start: a host with the newest version starts quietly; one
    that lacks it says what it pulls."""
    url, _ = server
    published(tmp_path, tuned["base"], "m:v1", url)
    run_service(tmp_path / "host", url)
    assert run_service(tmp_path / "host", url, "refresh").stderr == ""
    published(tmp_path, tuned["tuned"], "m:v2", url)
    out = run_service(tmp_path / "host", url, "refresh")
    assert out.stdout.strip() == "m:v2"
    lines = out.stderr.splitlines()
    assert lines[0].startswith("cas: pulling m:latest (newer than the one here) from "), lines
    assert lines[-1].startswith(f"cas: pulled m:v2 from {url} in ") and "copied from files on this host" in lines[-1]


def test_a_long_pull_says_how_far_it_got(tmp_path, synthetic, server, token, monkeypatch, caplog):
    from cas.sync import notices

    url, _ = server
    published(tmp_path, synthetic, "m:v1", url)
    monkeypatch.setattr(notices, "PERIOD", 0.0)  # a note at every step, as a long pull gets one every 10 s
    with caplog.at_level("INFO", logger="cas"):
        Cache(tmp_path / "host").resolve("m:latest", remote=url)
    steps = [
        r.getMessage() for r in caplog.records if r.name == "cas" and r.getMessage().startswith("pulling m:latest: ")
    ]
    assert steps and steps[-1].endswith(" done"), steps
