"""How the chunk size trades deduplication against metadata: the data behind cas/content/chunking.py.

    python -m benchmarks.chunk_sizes [--size-mb 256]

For a synthetic safetensors model (fp32 and bf16) and two kinds of change,
prints, per average chunk size, the bytes a receiver holding the base must
fetch to get the variant, against the bytes that really changed, and the
metadata a tree carries for the model (one record per chunk):

- fine-tune: 10% of the tensors get new values;
- grown header: the same tensors behind a longer safetensors header, so
  every tensor moves by a few hundred bytes.

The codec scenario of ``python -m benchmarks`` reports the fp32 fine-tune rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from blake3 import blake3
from pyfastcdc import FastCDC

from cas.content.tree import CHUNK_RECORD
from tests.support import synth

SIZES = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20]


def chunks(path: Path, avg: int) -> dict[bytes, int]:
    cdc = FastCDC(avg, min_size=avg // 4, max_size=avg * 4)
    with open(path, "rb") as f:
        return {blake3(c.data).digest(): c.length for c in cdc.cut_stream(f)}


def changed_bytes(a: list, b: list) -> int:
    return sum(x.nbytes for (_, x), (_, y) in zip(a, b) if x.tobytes() != y.tobytes())


def measure(size: int, dtype: str, grown: bool = True) -> list[dict]:
    """One row per (change, average chunk size): bytes fetched, bytes changed, chunks and tree size."""
    base = synth.model_tensors(3, size, dtype)
    tuned = synth.fine_tune(base, 0.10, seed=4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cas-chunks-") as d:
        work = Path(d)
        synth.write_safetensors(work / "base", base)
        synth.write_safetensors(work / "tuned", tuned)
        variants = {"fine-tune 10%": (work / "tuned", changed_bytes(base, tuned))}
        if grown:
            synth.write_safetensors(work / "grown", base, metadata={"note": "x" * 300})
            variants["grown header"] = (work / "grown", 0)
        for avg in SIZES:
            have = chunks(work / "base", avg)
            for change, (path, changed) in variants.items():
                want = chunks(path, avg)
                rows.append({
                    "dtype": dtype, "change": change, "avg_kib": avg >> 10,
                    "fetched": sum(n for cid, n in want.items() if cid not in have), "changed": changed,
                    "chunks": len(want), "tree_kb": len(want) * CHUNK_RECORD.size / 1e3,
                })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chunk_sizes", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    args = ap.parse_args(argv)
    print(
        f"{'dtype':6} {'change':13} {'avg':>6} {'fetched':>10} {'changed':>10} {'ratio':>6} {'chunks':>7} {'tree':>8}"
    )
    for dtype in ("F32", "BF16"):
        for r in measure(args.size_mb << 20, dtype):
            ratio = f"{r['fetched'] / r['changed']:.2f}" if r["changed"] else "-"
            print(
                f"{dtype:6} {r['change']:13} {r['avg_kib']:>5}K {r['fetched'] / 1e6:>8.2f}MB "
                f"{r['changed'] / 1e6:>8.2f}MB {ratio:>6} {r['chunks']:>7} {r['tree_kb']:>6.0f}KB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
