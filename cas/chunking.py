"""Content-defined chunking (FastCDC 2020, native, through pyfastcdc).

Cut points depend only on nearby bytes, so an insertion near the start of a
file (a grown safetensors header) shifts data without changing later chunks.

Sizes: minimum 16 KiB, average target 64 KiB (FastCDC's effective average is
target + minimum, about 80 KiB), maximum 256 KiB.  Measured with
``python -m benchmarks.chunk_sizes`` on synthetic fine-tunes of a 256 MB
fp32/bf16 safetensors model (10% of tensors changed; header grown): 64 KiB
moves within 1-2% of the changed bytes, as 16 KiB does, while 1 MiB chunks
move 6-10% more; 16 KiB costs four times the manifest size (40 bytes per
chunk in the tree, and as many locator entries and pack index entries) and
four times the per-chunk work in a pull.  Xet settled on the same 64 KiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024


class Readable(Protocol):
    def readinto(self, b: memoryview, /) -> int: ...


def _fastcdc():
    from pyfastcdc import FastCDC

    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)


def chunk_stream(stream: Readable) -> Iterator[memoryview]:
    """Yield the chunks of a stream in order.

    Each view is valid only until the next one is produced: hash or copy it
    before advancing.  Memory stays at the chunker's window whatever the
    stream's size.
    """
    for chunk in _fastcdc().cut_stream(stream):
        yield chunk.data


def chunk_bytes(data: bytes | memoryview) -> Iterator[memoryview]:
    """Yield the chunks of an in-memory buffer (views into it)."""
    for chunk in _fastcdc().cut_buf(data):
        yield chunk.data
