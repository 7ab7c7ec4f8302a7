"""Scenario 4, deduplication: bytes stored and moved for variants of a base model, against whole-file dedup.

Each variant is pushed to a repository that holds only the base, and
pulled to a host that holds only the base.  For each we record the raw
bytes the pull had to move (the model's size less what it reused from the
base), the encoded bytes that crossed the network for them, and the bytes
the push added to the repository.  The baseline is whole-file
deduplication, what the Hugging Face cache and BentoML do: a file whose
hash changed moves whole; it is compared with the raw bytes, like for like.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from benchmarks.harness import reset
from cas import Cache
from tests.support import synth


def _file_hashes(model: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for f in sorted(p for p in model.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        out[str(f.relative_to(model))] = (h.hexdigest(), f.stat().st_size)
    return out


def variants(work: Path, size: int) -> dict[str, Path]:
    base = synth.model_tensors(61, size, layer_bytes=2 << 20)
    out = {"base": synth.write_model_dir(work / "v-base", base)}
    for k in (1, 10, 50):
        out[f"{k}% of tensors changed"] = synth.write_model_dir(
            work / f"v-ft{k}", synth.fine_tune(base, k / 100, 62 + k)
        )
    out["header grew (every offset shifts)"] = synth.write_model_dir(work / "v-grown", base, {"note": "z" * 700})
    extra = synth.model_tensors(63, size // 10, layer_bytes=2 << 20)
    appended = base + [(f"extra.{name}", arr) for name, arr in extra]
    out["10% more tensors appended"] = synth.write_model_dir(work / "v-appended", appended)
    halves = [(name, arr.astype(np.float16)) for name, arr in base]
    out["converted to fp16"] = synth.write_model_dir(work / "v-fp16", halves)
    out["unrelated model"] = synth.write_model_dir(work / "v-other", synth.model_tensors(64, size, layer_bytes=2 << 20))
    return out


def run(work: Path, quick: bool) -> dict:
    size = (48 if quick else 256) << 20
    models = variants(work / "dedup-models", size)
    base_repo = work / "dedup-base-repo"
    src = Cache(work / "dedup-src", durable=False)
    base = models.pop("base")
    base_files = _file_hashes(base)
    base_info = src.add(base, "m:base")
    pushed = src.push("m:base", f"file://{base_repo}")
    out: dict = {"base": {"size": base_info.size, "repo_bytes_added": pushed.bytes_uploaded}}
    for i, (label, path) in enumerate(models.items()):
        tag = f"m:v{i}"
        info = src.add(path, tag)
        repo = work / "dedup-repo"
        shutil.copytree(base_repo, repo)  # a repository holding only the base
        url = f"file://{repo}"
        stored = src.push(tag, url).bytes_uploaded
        host = Cache(work / "dedup-host", durable=False)
        host.pull("m:base", url)
        stats = host.pull(tag, url)
        whole_file = sum(n for name, (h, n) in _file_hashes(path).items() if base_files.get(name, ("", 0))[0] != h)
        out[label] = {
            "size": info.size,
            "raw_moved": info.size - stats.bytes_reused,
            "encoded_moved": stats.bytes_fetched,
            "repo_bytes_added": stored,
            "whole_file_bytes": whole_file,
        }
        reset(work / "dedup-host")
        reset(repo)
    for d in (work / "dedup-models", work / "dedup-src", base_repo):
        reset(d)
    return out
