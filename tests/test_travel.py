"""Classes and instances with models travel between processes, as Ray, Ray Serve, Dask and joblib send them.

A class defined in a script or notebook goes by value (cloudpickle); an
importable one by reference (pickle).  The sending process and the
receiving one have caches of their own; the receiver resolves the models
itself, lazily, on first access: a class's tag as it stands there, an
instance's already resolved model as the same concrete version.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import descriptor
from cas import Cache, CasError

from .conftest import REPO, published, require, tree_files

IMPORTABLE = """
import descriptor

class Importable:
    model = descriptor.Model("m:latest")
"""

SENDER = """
import copy, pickle, sys
import cloudpickle
import descriptor
sys.path.insert(0, sys.argv[1])
from travelling import Importable

class Service:  # defined in __main__, as in a script or a notebook: cloudpickle sends it by value
    model = descriptor.Model("m:latest")

sent = Service()
sent.model.path  # resolved here, in the sender's cache
importable = Importable()
importable.model.path
assert copy.deepcopy(sent).model is sent.model
sys.stdout.buffer.write(pickle.dumps({
    "class": cloudpickle.dumps(Service),
    "instance": cloudpickle.dumps(sent),
    "pickled_instance": pickle.dumps(importable),
    "sender_path": str(sent.model.path),
}))
"""

RECEIVER = """
import json, os, pickle, sys
sys.path.insert(0, sys.argv[1])
payload = pickle.loads(sys.stdin.buffer.read())

def seen(model):
    return {"tag": model.tag, "path": str(model.path)}

Service = pickle.loads(payload["class"])
instance = pickle.loads(payload["instance"])
before = instance.__dict__["model"]._path  # nothing is resolved until the model is used
pickled = pickle.loads(payload["pickled_instance"])
print(json.dumps({
    "class": seen(Service().model),
    "instance": seen(instance.model),
    "pickled_instance": seen(pickled.model),
    "lazy": before is None,
}))
"""


def run(code: str, env: dict[str, str], *args: str, data: bytes | None = None) -> bytes:
    out = subprocess.run([sys.executable, "-c", code, *args], input=data, capture_output=True, cwd=REPO, env=env,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return out.stdout


def test_classes_and_resolved_instances_travel_to_another_process_and_resolve_there(tmp_path, synthetic, minilm,
                                                                                    server, token):  # fmt: skip
    require("cloudpickle")
    url, _ = server
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "travelling.py").write_text(IMPORTABLE)
    publisher = published(tmp_path, synthetic, "m:v1", url)
    sender_env = {**os.environ, "CAS_HOME": str(tmp_path / "sender"), "CAS_REMOTE": url}
    payload = run(SENDER, sender_env, str(tmp_path / "mod"))
    assert publisher.info.tag == "m:v1"
    newer = Cache(tmp_path / "src")
    newer.add(minilm, "m:v2")
    newer.push("m:v2", url)  # the repository moves on between sending and receiving

    receiver_env = {**sender_env, "CAS_HOME": str(tmp_path / "receiver")}
    got = json.loads(run(RECEIVER, receiver_env, str(tmp_path / "mod"), data=payload))

    assert got["lazy"]
    assert got["class"]["tag"] == "m:v2"  # a class's declaration resolves as it stands in the receiver
    assert got["instance"]["tag"] == got["pickled_instance"]["tag"] == "m:v1"  # an instance keeps its version
    for name in ("class", "instance", "pickled_instance"):
        assert Path(got[name]["path"]).is_relative_to(tmp_path / "receiver")  # materialized in the receiver's cache
    assert tree_files(Path(got["instance"]["path"])) == tree_files(synthetic)
    assert tree_files(Path(got["class"]["path"])) == tree_files(minilm)


def test_models_pickle_deepcopy_and_travel_unresolved(tmp_path, synthetic):
    cloudpickle = require("cloudpickle")
    cache = Cache(tmp_path / "c")
    cache.add(synthetic, "m:v1")

    class Service:
        model = descriptor.Model("m:v1", cache=cache, remote="http://127.0.0.1:9")

    s = Service()
    resolved = s.model
    cloudpickle.dumps(Service)  # by value, as for a class in a notebook (the other process: the test above)
    assert copy.deepcopy(s).model is resolved  # within a process a copy is the same model
    again = pickle.loads(pickle.dumps(Service.model))  # resolves again where it lands
    assert again._resolved is None
    assert (again.tag, again._cache.root, again._remote, again._attr) == ("m:v1", cache.root, "http://127.0.0.1:9",
                                                                         "model")  # fmt: skip
    assert again.resolve().path == resolved.path
    assert pickle.loads(pickle.dumps(cache)).root == cache.root


def test_an_instance_whose_version_differs_where_it_lands_is_refused(tmp_path, synthetic, minilm, monkeypatch):
    Cache(tmp_path / "a").add(synthetic, "m:v1")
    Cache(tmp_path / "b").add(minilm, "m:v1")  # another model under the same version on the receiving host

    class Service:
        model = descriptor.Model("m:v1")  # the default cache: $CAS_HOME of whichever process resolves it

    monkeypatch.setenv("CAS_HOME", str(tmp_path / "a"))
    s = Service()
    s.model.path
    blob = pickle.dumps(s.model)
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "b"))
    landed = pickle.loads(blob)
    assert landed.tag == "m:v1"
    with pytest.raises(CasError, match=r"m:v1 resolved to root .* here but to .* in the process that sent"):
        landed.path
