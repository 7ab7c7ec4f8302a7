"""How the chunk size trades deduplication against metadata: the data behind cas/chunking.py.

    python -m benchmarks.chunk_sizes [--size-mb 256]

For a synthetic safetensors model (fp32 and bf16) and two kinds of change,
prints, per average chunk size, the bytes a receiver holding the base must
fetch to get the variant, against the bytes that really changed, and the
metadata a tree carries for the model (36 bytes per chunk):

- fine-tune: 10% of the tensors get new values;
- grown header: the same tensors behind a longer safetensors header, so
  every tensor moves by a few hundred bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from blake3 import blake3
from pyfastcdc import FastCDC

from benchmarks import synth

SIZES = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20]


def chunks(path: Path, avg: int) -> dict[bytes, int]:
    cdc = FastCDC(avg, min_size=avg // 4, max_size=avg * 4)
    with open(path, "rb") as f:
        return {blake3(c.data).digest(): c.length for c in cdc.cut_stream(f)}


def changed_bytes(a: list, b: list) -> int:
    return sum(x.nbytes for (_, x), (_, y) in zip(a, b) if x.tobytes() != y.tobytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chunk_sizes", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cas-chunks-"))
    print(
        f"{'dtype':6} {'change':13} {'avg':>6} {'fetched':>10} {'changed':>10} {'ratio':>6} {'chunks':>7} {'tree':>8}"
    )
    for dtype in ("F32", "BF16"):
        base = synth.model_tensors(3, args.size_mb << 20, dtype)
        tuned = synth.fine_tune(base, 0.10, seed=4)
        synth.write_safetensors(work / "base", base)
        synth.write_safetensors(work / "tuned", tuned)
        synth.write_safetensors(work / "grown", base, metadata={"note": "x" * 300})
        variants = {"fine-tune 10%": (work / "tuned", changed_bytes(base, tuned)), "grown header": (work / "grown", 0)}
        for avg in SIZES:
            have = chunks(work / "base", avg)
            for label, (path, changed) in variants.items():
                want = chunks(path, avg)
                fetched = sum(n for cid, n in want.items() if cid not in have)
                ratio = f"{fetched / changed:.2f}" if changed else "-"
                print(
                    f"{dtype:6} {label:13} {avg >> 10:>5}K {fetched / 1e6:>8.2f}MB {changed / 1e6:>8.2f}MB "
                    f"{ratio:>6} {len(want):>7} {len(want) * 36 / 1e3:>6.0f}KB"
                )
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
