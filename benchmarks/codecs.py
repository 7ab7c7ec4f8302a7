"""Scenario 5, the codec: size and speed per dtype for raw, plain zstd and byte-grouped zstd; the chunk size.

Every chunk of a synthetic safetensors file (and the real MiniLM weights)
is encoded three ways: raw, one zstd frame (the level cas uses), and the
cas codec (the best of zstd and zstd over byte planes).  Speeds are MB/s
of raw bytes on one thread.  The chunk-size table reruns the measurement
behind ``cas/content/chunking.py``: bytes a 10% fine-tune fetches, and tree
metadata, per average chunk size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import chunk_sizes
from cas.content import codec
from cas.content.chunking import chunk_stream
from cas.content.digest import chunk_id
from tests.support import synth
from tests.support.synth import minilm_path


def _measure(path: Path) -> dict:
    import zstandard

    z = zstandard.ZstdCompressor(level=codec.LEVEL)
    d = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        chunks = [bytes(c) for c in chunk_stream(f)]  # the stream's views share one buffer
    raw = sum(len(c) for c in chunks)
    t = time.perf_counter()
    plain = [z.compress(c) for c in chunks]
    zstd_enc = time.perf_counter() - t
    t = time.perf_counter()
    for p in plain:
        d.decompress(p)
    zstd_dec = time.perf_counter() - t
    t = time.perf_counter()
    ours = [codec.encode(c) for c in chunks]
    cas_enc = time.perf_counter() - t
    ids = [chunk_id(c) for c in chunks]
    t = time.perf_counter()
    for e, c, cid in zip(ours, chunks, ids):
        codec.decode(e, len(c), cid)
    cas_dec = time.perf_counter() - t
    mb = raw / 1e6
    return {
        "raw_bytes": raw,
        "zstd_ratio": sum(min(len(p), len(c)) + 1 for p, c in zip(plain, chunks)) / raw,
        "cas_ratio": sum(len(e) for e in ours) / raw,
        "zstd_encode_mbps": mb / zstd_enc,
        "zstd_decode_mbps": mb / zstd_dec,
        "cas_encode_mbps": mb / cas_enc,
        "cas_decode_verify_mbps": mb / cas_dec,
    }


def run(work: Path, quick: bool) -> dict:
    size = (16 if quick else 64) << 20
    out: dict = {"dtypes": {}}
    with tempfile.TemporaryDirectory(dir=work) as d:
        for dtype in ("F32", "F16", "BF16", "I8"):
            path = Path(d) / dtype
            synth.write_safetensors(path, synth.model_tensors(41, size, dtype, layer_bytes=1 << 20))
            out["dtypes"][dtype.lower()] = _measure(path)
    out["dtypes"]["minilm fp32 (real)"] = _measure(minilm_path() / "model.safetensors")
    rows = chunk_sizes.measure((32 if quick else 128) << 20, "F32", grown=False)
    out["chunk_sizes"] = [{**r, "fetched_over_changed": r["fetched"] / r["changed"]} for r in rows]
    return out
