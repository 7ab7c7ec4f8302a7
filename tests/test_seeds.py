"""Seeds: a pull takes chunks from files already on this host outside the cache (--seed DIR, CAS_SEEDS),
each one verified, and fetches only the rest; bytes counted at a proxy in front of `cas serve`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import descriptor
from cas import Cache, InvalidInput
from tests.support import synth

from .conftest import cas_cli, stats, tree_files


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("seeded")
    base = synth.model_tensors(seed=51, total_bytes=16 << 20, layer_bytes=1 << 20)
    tuned = synth.fine_tune(base, 0.10, seed=52)
    return {"v1": synth.write_model_dir(d / "v1", base), "v2": synth.write_model_dir(d / "v2", tuned)}


@pytest.fixture
def repo(tmp_path, versions, server, token, proxy) -> str:
    url, _ = server
    src = Cache(tmp_path / "src")
    for tag in ("v1", "v2"):
        src.add(versions[tag], f"m:{tag}")
        src.push(f"m:{tag}", url)
    return proxy(url)


def fetched(repo: str, run) -> int:
    before = stats(repo)["pack_bytes"]
    run()
    return stats(repo)["pack_bytes"] - before


def test_a_folder_holding_v1_seeds_v2_as_well_as_a_cache_holding_v1(tmp_path, versions, repo):
    cached = Cache(tmp_path / "cached")
    cached.pull("m:v1", repo)
    from_cache = fetched(repo, lambda: cached.pull("m:v2", repo))
    seed = tmp_path / "checkout"
    shutil.copytree(versions["v1"], seed)
    before = tree_files(seed)
    host = tmp_path / "host"
    out = {}
    moved = fetched(repo, lambda: out.update(json.loads(cas_cli("pull", "m:v2", "--remote", repo, "--seed",
                                                                str(seed), "--json", home=host).stdout)))  # fmt: skip
    whole = Cache(tmp_path / "cold").estimate_pull("m:v2", repo).bytes_to_fetch
    assert moved == out["bytes_transferred"] and moved <= from_cache * 1.05 + (256 << 10) and moved < 0.2 * whole
    assert tree_files(Cache(host).materialize("m:v2")) == tree_files(versions["v2"])
    assert tree_files(seed) == before  # a seed is only read


def test_cas_seeds_reaches_the_descriptor_and_follows_a_hugging_face_cache_links(tmp_path, versions, repo,
                                                                                  monkeypatch):  # fmt: skip
    """A Hugging Face cache keeps each file once under blobs/ and links it from snapshots/<revision>/."""
    hub = tmp_path / "hub" / "models--org--m"
    snap = hub / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (hub / "blobs").mkdir()
    for f in versions["v1"].iterdir():
        shutil.copy(f, hub / "blobs" / f"sha-{f.name}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"sha-{f.name}"))
    monkeypatch.setenv("CAS_SEEDS", f"{tmp_path / 'nowhere-yet'}{os.pathsep}{tmp_path / 'hub'}")
    (tmp_path / "nowhere-yet").mkdir()

    class Service:
        model = descriptor.Model("m:v2", cache=Cache(tmp_path / "host"), remote=repo)

    moved = fetched(repo, lambda: Service().model)
    assert moved < 0.2 * Cache(tmp_path / "cold").estimate_pull("m:v2", repo).bytes_to_fetch
    assert tree_files(Service().model.path) == tree_files(versions["v2"])


def test_a_seed_changing_while_it_is_read_is_fetched_instead(tmp_path, versions, repo):
    """The seed file is rewritten right after the first seeded chunk lands: every later chunk read from it
    fails its id and comes from the repository; the pulled model is exact."""
    seed = tmp_path / "seed"
    shutil.copytree(versions["v1"], seed)
    calm = fetched(repo, lambda: Cache(tmp_path / "calm").pull("m:v2", repo, seeds=[seed]))
    size = (seed / "model.safetensors").stat().st_size
    seen: list[int] = []

    def progress(n: int) -> None:
        if not seen:
            with open(seed / "model.safetensors", "r+b") as f:  # in place, same size: only the bytes change
                f.write(os.urandom(size))
        seen.append(n)

    host = Cache(tmp_path / "host")
    moved = fetched(repo, lambda: host.pull("m:v2", repo, seeds=[seed], progress=progress))
    assert moved > calm + 0.5 * size
    assert tree_files(host.materialize("m:v2")) == tree_files(versions["v2"])
    assert host.verify().ok


def test_a_seed_that_is_not_a_folder_is_one_line(tmp_path, repo):
    out = cas_cli("pull", "m:v2", "--remote", repo, "--seed", str(tmp_path / "missing"), home=tmp_path / "h",
                  check=False)  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert f"seed {tmp_path / 'missing'} is not a folder" in out.stderr and stats(repo)["pack_requests"] == 0
    with pytest.raises(InvalidInput, match="is not a folder"):
        Cache(tmp_path / "h").pull("m:v2", repo, seeds=[tmp_path / "missing"])
