"""Scenario 14, a registry as the repository (``oci://``), against Debian's CNCF distribution registry.

- Cold pull: ``cas pull`` of a version from the registry (whole process, no
  fsync), against a raw download of the same blobs from the same registry
  at the same concurrency (``benchmarks.rawget``: ranges written at their
  offsets, nothing decoded or verified): time and CPU, 3 runs interleaved.
- Delta pull of a fine-tune of 10% of the tensors: the bytes fetched from
  the registry, against the same pull from ``cas serve``.
- Stored bytes: the registry's storage after pushing both versions in cas's
  layout, against a second registry given both as plain ModelPack
  artifacts (``--format modelpack``: raw layers, a changed file stored
  whole again), and the bytes a ModelPack import of v2 moves with the cas
  tree beside it.

The fan-out table (scenario 8) has the registry as a server too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import met, push_as_owner, reset, start_server, summary, wall_cpu
from cas import Cache
from cas.repo import CONCURRENCY
from tests.support import synth
from tests.support.procs import REPO, free_port, stop
from tests.support.registry import start_registry

RUNS = 3


def run(work: Path, quick: bool) -> dict:
    size = (32 if quick else 512) << 20
    base = synth.model_tensors(141, size, layer_bytes=4 << 20)
    v1 = synth.write_model_dir(work / "reg-v1", base)
    v2 = synth.write_model_dir(work / "reg-v2", synth.fine_tune(base, 0.10, seed=142))
    src = Cache(work / "reg-src", durable=False)
    src.add(v1, "m:v1")
    src.add(v2, "m:v2")
    procs = []
    try:
        cas_url, mp_url = _registry(work / "reg-cas", procs), _registry(work / "reg-modelpack", procs)
        url, mp = f"oci://{cas_url.removeprefix('http://')}/team", f"oci://{mp_url.removeprefix('http://')}/team"
        for tag in ("m:v1", "m:v2"):
            src.push(tag, url)
            _cli(work / "reg-src", "push", tag, "--remote", mp, "--format", "modelpack")
        out = {"model_bytes": src.get("m:v1").size, "cold": _cold(work, url, cas_url, 1 if quick else RUNS)}
        out["delta"] = _delta(work, src, url)
        out["stored"] = {"cas": _du(work / "reg-cas" / "data"), "modelpack": _du(work / "reg-modelpack" / "data")}
        out["modelpack_import"] = _modelpack_import(work, mp_url)
        return out
    finally:
        for proc in procs:
            stop(proc)
        for d in ("reg-v1", "reg-v2", "reg-src", "reg-cas", "reg-modelpack", "reg-host", "reg-raw", "reg-serve"):
            reset(work / d)


def _registry(where: Path, procs: list) -> str:
    where.mkdir(parents=True)
    proc, url, _ = start_registry(where, "none")
    procs.append(proc)
    return url


def _cli(home: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "cas", *args, "--json"], cwd=REPO, check=True, capture_output=True,
                         text=True, env={**os.environ, "CAS_HOME": str(home)})  # fmt: skip
    return json.loads(out.stdout)


def _cold(work: Path, url: str, base: str, runs: int) -> dict:
    """``cas pull`` against a raw download of the version's blobs, interleaved, each run on a fresh host."""
    blobs = _version_blobs(base, "team/m", "v1")
    raw_cmd = ["-m", "benchmarks.rawget", "--concurrency", str(CONCURRENCY), f"{base}/v2/team/m/blobs",
               str(work / "reg-raw"), *(f"{d}={n}" for d, n in blobs)]  # fmt: skip
    env = {**os.environ, "CAS_DURABLE": "0", "CAS_HOME": str(work / "reg-host")}
    cas, raw = [], []
    for _ in range(runs):
        subprocess.run(["sync"], check=True)
        cas.append(wall_cpu([sys.executable, "-m", "cas", "pull", "m:v1", "--remote", url], env))
        reset(work / "reg-host")
        subprocess.run(["sync"], check=True)
        raw.append(wall_cpu([sys.executable, *raw_cmd], env))
        reset(work / "reg-raw")
    return {"blob_bytes": sum(n for _, n in blobs),
            "cas": {"seconds": summary([c[0] for c in cas]), "cpu": summary([c[2] for c in cas])},
            "raw": {"seconds": summary([r[0] for r in raw]), "cpu": summary([r[2] for r in raw])}}  # fmt: skip


def _version_blobs(base: str, repository: str, tag: str) -> list[tuple[str, int]]:
    """The blobs a version's manifest names, as a plain client would download them."""
    import urllib.request

    request = urllib.request.Request(f"{base}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
    manifest = json.loads(urllib.request.urlopen(request, timeout=30).read())
    return [(layer["digest"], layer["size"]) for layer in manifest["layers"]]


def _delta(work: Path, src: Cache, url: str) -> dict:
    """v1 then v2 on one host: what v2 fetched from the registry, and from ``cas serve``."""
    port = free_port()
    served = start_server(work / "reg-serve", port)
    try:
        for tag in ("m:v1", "m:v2"):
            push_as_owner(src, tag, f"http://127.0.0.1:{port}")
        out = {}
        for name, where in (("registry", url), ("cas serve", f"http://127.0.0.1:{port}")):
            _cli(work / "reg-host", "pull", "m:v1", "--remote", where)
            out[name] = _cli(work / "reg-host", "pull", "m:v2", "--remote", where)["bytes_transferred"]
            reset(work / "reg-host")
        return out
    finally:
        stop(served)


def _modelpack_import(work: Path, base: str) -> dict:
    host = base.removeprefix("http://")
    _cli(work / "reg-host", "import-oci", f"{host}/team/m:v1")
    got = _cli(work / "reg-host", "import-oci", f"{host}/team/m:v2")
    reset(work / "reg-host")
    return {"bytes_fetched": got["bytes_transferred"], "bytes_reused": got["bytes_reused"]}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- how the report shows it ----------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def headline_rows(f: dict) -> list[tuple[str, str, str, str, str]]:
    c = f["cold"]
    speed = c["raw"]["seconds"]["median"] / c["cas"]["seconds"]["median"]
    cpu = c["cas"]["cpu"]["median"] / c["raw"]["cpu"]["median"]
    d, s = f["delta"], f["stored"]
    size = f["model_bytes"]
    return [
        (f"cold pull of {size / 1e6:.0f} MB from a registry vs a raw download of its blobs",
         f"{c['cas']['seconds']['median']:.2f} s", f"raw {c['raw']['seconds']['median']:.2f} s", f"{speed:.2f}x",
         f"≥ 0.8x: {met(speed >= 0.8)}"),
        ("cold pull CPU from a registry vs the raw download's", f"{c['cas']['cpu']['median']:.2f} s",
         f"raw {c['raw']['cpu']['median']:.2f} s", f"{cpu:.2f}x", f"≤ 1.5x: {met(cpu <= 1.5)}"),
        ("delta pull of a 10% fine-tune from a registry: bytes fetched", _mb(d["registry"]),
         f"cas serve {_mb(d['cas serve'])}", f"{d['registry'] / size:.1%} of the model",
         f"as cas serve: {met(d['registry'] <= 1.05 * d['cas serve'])}"),
        ("registry storage for v1 + fine-tune, cas layout vs plain ModelPack", _mb(s["cas"]),
         f"ModelPack {_mb(s['modelpack'])}", f"{s['cas'] / s['modelpack']:.2f}x", "smaller"),
    ]  # fmt: skip


def section(f: dict) -> str:
    c, d, s, m = f["cold"], f["delta"], f["stored"], f["modelpack_import"]
    rows = [
        ("cold pull, `cas pull` (no fsync)", _spread(c["cas"]["seconds"]), _spread(c["cas"]["cpu"])),
        (f"raw download of the same {_mb(c['blob_bytes'])} of blobs, {CONCURRENCY} ranges in flight",
         _spread(c["raw"]["seconds"]), _spread(c["raw"]["cpu"])),
    ]  # fmt: skip
    lines = ["| pull | wall (min/median/max) | CPU (min/median/max) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    return (f"## 14. Registry (`oci://`)\n\nDebian's CNCF distribution registry on 127.0.0.1 holds a "
            f"{_mb(f['model_bytes'])} synthetic model and a fine-tune of 10% of its tensors.\n\n" + "\n".join(lines)
            + f"\n\nDelta pull of the fine-tune: {_mb(d['registry'])} fetched from the registry, {_mb(d['cas serve'])} "
            f"from `cas serve`.\n\nRegistry storage for both versions: {_mb(s['cas'])} in cas's layout (chunks "
            f"deduplicated and compressed), {_mb(s['modelpack'])} as two plain ModelPack artifacts (raw layers; the "
            f"changed file is stored whole again). A `cas import-oci` of the ModelPack v2 onto a host holding v1, "
            f"with the cas tree beside the artifact, fetched {_mb(m['bytes_fetched'])} and reused "
            f"{_mb(m['bytes_reused'])} from local files.")  # fmt: skip


def _spread(s: dict) -> str:
    return f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} s"
