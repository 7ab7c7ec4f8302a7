"""The chunk codec: how one chunk is stored in a repository pack.

An encoded chunk is one codec byte followed by the payload:

- ``RAW``: the bytes as they are;
- ``ZSTD``: a zstd frame of the bytes;
- ``ZSTD_BG2`` / ``ZSTD_BG4``: a zstd frame of the bytes split into byte
  planes of 2- or 4-byte words (every first byte, then every second, ...).
  Weights in fp16/bf16/fp32 keep their sign and exponent bits in the same
  byte of every word; grouped together they become compressible.

``encode`` keeps the smallest candidate and falls back to raw when
compression saves less than ``MIN_SAVING``.  ``decode`` trusts nothing: it
checks the frame's declared size against the expected raw length before
allocating, and the chunk id after decoding.
"""

from __future__ import annotations

from .digest import chunk_id
from .errors import CorruptObject

RAW, ZSTD, ZSTD_BG2, ZSTD_BG4 = 0, 1, 2, 3
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", ZSTD_BG2: "zstd+bg2", ZSTD_BG4: "zstd+bg4"}
_WORD = {ZSTD_BG2: 2, ZSTD_BG4: 4}

MIN_SAVING = 1 / 32  # keep raw unless compression saves over ~3%
LEVEL = 3

_zstd = None


def _z():
    """zstandard, imported on first use so that resolving a model never loads it."""
    global _zstd
    if _zstd is None:
        import zstandard

        _zstd = zstandard
    return _zstd


def group(data: bytes | memoryview, word: int) -> bytes:
    """Split ``data`` into ``word`` byte planes; a tail shorter than a word stays last, as is."""
    data = bytes(data)
    body = len(data) - len(data) % word
    return b"".join([data[i:body:word] for i in range(word)]) + data[body:]


def ungroup(data: bytes, word: int) -> bytes:
    """Inverse of ``group``."""
    body = len(data) - len(data) % word
    plane = body // word
    out = bytearray(len(data))
    for i in range(word):
        out[i:body:word] = data[i * plane : (i + 1) * plane]
    out[body:] = data[body:]
    return bytes(out)


def encode(data: bytes | memoryview, *, level: int = LEVEL) -> bytes:
    """Encode one chunk with the smallest of the codecs."""
    z = _z()
    cctx = z.ZstdCompressor(level=level, write_content_size=True)
    raw = bytes(data)
    best_codec, best = RAW, raw
    candidates = [(ZSTD, raw)] + [(c, group(raw, w)) for c, w in _WORD.items()]
    for codec, payload in candidates:
        packed = cctx.compress(payload)
        if len(packed) < len(best):
            best_codec, best = codec, packed
    if best_codec != RAW and len(best) > len(raw) * (1 - MIN_SAVING):
        best_codec, best = RAW, raw
    return bytes([best_codec]) + best


def decode(blob: bytes | memoryview, raw_length: int, expected_id: bytes) -> bytes:
    """Decode one chunk and prove it is the chunk asked for."""
    if not blob:
        raise CorruptObject("empty encoded chunk")
    codec, payload = blob[0], blob[1:]
    if codec == RAW:
        out = bytes(payload)
    elif codec in (ZSTD, ZSTD_BG2, ZSTD_BG4):
        z = _z()
        try:
            declared = z.frame_content_size(payload)
        except z.ZstdError as e:
            raise CorruptObject(f"chunk {expected_id.hex()}: not a zstd frame ({e})") from None
        if declared != raw_length:
            raise CorruptObject(
                f"chunk {expected_id.hex()}: frame declares {declared} bytes, the manifest says {raw_length}"
            )
        try:
            out = z.ZstdDecompressor().decompress(payload, max_output_size=raw_length)
        except z.ZstdError as e:
            raise CorruptObject(f"chunk {expected_id.hex()}: zstd frame is damaged ({e})") from None
        if codec in _WORD:
            out = ungroup(out, _WORD[codec])
    else:
        raise CorruptObject(f"chunk {expected_id.hex()}: unknown codec byte {codec}")
    if len(out) != raw_length:
        raise CorruptObject(f"chunk {expected_id.hex()}: decoded {len(out)} bytes, expected {raw_length}")
    if chunk_id(out) != expected_id:
        raise CorruptObject(f"chunk {expected_id.hex()}: decoded bytes do not match the chunk id")
    return out
