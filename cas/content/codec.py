"""The chunk codec: how one chunk is stored in a repository pack.

An encoded chunk is one codec byte followed by the payload:

- ``RAW``: the bytes as they are;
- ``ZSTD``: one zstd frame of the bytes;
- ``ZSTD_BG2`` / ``ZSTD_BG4``: the bytes split into byte planes of 2- or
  4-byte words (every first byte, then every second, ...), each plane
  stored on its own as a zstd frame or raw, whichever is smaller, then the
  tail shorter than a word.  Weights in fp16/bf16/fp32 keep sign and
  exponent in one byte of each word: that plane compresses well, the
  mantissa planes hardly at all.  Separate frames matter: one frame over
  all planes shares one entropy table among them and saves far less (real
  MiniLM fp32: 0.91 of raw as one frame, 0.86 as separate planes).

  Plane layout: ``word`` headers of (kind byte: 0 raw / 1 zstd, uint32
  big-endian stored length), then the stored planes, then the tail.

``encode`` keeps the smallest candidate (chosen on a sample for large
chunks) and falls back to raw when compression saves less than
``MIN_SAVING``.  ``decode`` trusts nothing: it
checks every declared size against the expected raw length before
allocating, and the chunk id after decoding.
"""

from __future__ import annotations

import struct
import sys
import threading
from typing import Any, NamedTuple

from ..errors import CorruptObject
from .digest import chunk_id

RAW, ZSTD, ZSTD_BG2, ZSTD_BG4 = 0, 1, 2, 3
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", ZSTD_BG2: "zstd+bg2", ZSTD_BG4: "zstd+bg4"}
_WORD = {ZSTD_BG2: 2, ZSTD_BG4: 4}

MIN_SAVING = 1 / 32  # keep raw unless compression saves over ~3%
SAMPLE = 8 << 10  # bytes a large chunk's codec is chosen on
LEVEL = 1  # measured: level 1 packs fp32/bf16/MiniLM chunks 1% smaller than 3 (planes are entropy-bound) and faster

# A byte plane is a stream of few distinct values (an exponent plane) or near noise (a mantissa plane): level
# 1's match finder spends its time there on short matches that save nothing.  Matches of 7 bytes or more, a
# 64-entry hash table and a 128 KiB window compressed fp32 and bf16 exponent planes 2-4 times
# as fast and 7% smaller, fp16 high bytes as small.
PLANE_TUNING = {"min_match": 7, "search_log": 1, "hash_log": 6, "window_log": 17}

_zstd = None
_local = threading.local()  # zstd contexts are not thread-safe; making one per chunk costs more than decoding it


def _dctx() -> Any:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = _z().ZstdDecompressor()
    return d


def _cctx(level: int) -> tuple[Any, Any]:
    """This thread's compressors at ``level``: for whole chunks, and tuned for byte planes (``PLANE_TUNING``)."""
    c = getattr(_local, "cctx", None)
    if c is None or _local.level != level:
        z = _z()
        planes = z.ZstdCompressionParameters.from_level(level, write_content_size=True, **PLANE_TUNING)
        c = _local.cctx = (z.ZstdCompressor(level=level, write_content_size=True),
                           z.ZstdCompressor(compression_params=planes))  # fmt: skip
        _local.level = level
    return c


def _z() -> Any:
    """zstandard, imported on first use so that resolving a model never loads it."""
    global _zstd
    if _zstd is None:
        import zstandard

        _zstd = zstandard
    return _zstd


_PLANE = struct.Struct(">BI")


def planes(data: bytes, word: int) -> list[memoryview]:
    """Split ``data`` into ``word`` byte planes plus the tail shorter than a word.  One transposing copy
    (then views of its rows): 2.4x faster than copying each strided plane out on its own."""
    np = _np()
    body = len(data) - len(data) % word
    grid = np.frombuffer(data, dtype=np.uint8, count=body).reshape(-1, word).T.copy()
    return [memoryview(grid[i]) for i in range(word)] + [memoryview(data)[body:]]


def interleave(parts: list[bytes | memoryview], word: int) -> memoryview:
    """Inverse of ``planes``, into one new buffer (no further copies: callers write and hash it as it is).

    Words are built with shifts into the output viewed as 2- or 4-byte integers (byte planes in
    little-endian order): contiguous vector loops, 2.6x (fp16) and 1.4x (fp32) faster than writing
    each plane into a strided column, and no temporaries beyond one word-sized scratch for 4.
    """
    np = _np()
    *plns, tail = parts
    n = len(plns[0])
    body = n * word
    out = np.empty(body + len(tail), dtype=np.uint8)
    if word in _WIDE and _LITTLE:
        wide = _WIDE[word]
        words = out[:body].view(wide)
        src = [np.frombuffer(p, dtype=np.uint8) for p in plns]
        np.left_shift(src[-1], 8 * (word - 1), out=words, dtype=wide)
        if word > 2:
            scratch = np.empty(n, dtype=wide)
            for i in range(word - 2, 0, -1):
                np.left_shift(src[i], 8 * i, out=scratch, dtype=wide)
                np.bitwise_or(words, scratch, out=words)
        np.bitwise_or(words, src[0], out=words, dtype=wide)
    else:
        grid = out[:body].reshape(-1, word)
        for i, p in enumerate(plns):  # column writes: 3x faster than copying a transposed view
            grid[:, i] = np.frombuffer(p, dtype=np.uint8)
    out[body:] = np.frombuffer(tail, dtype=np.uint8)
    return memoryview(out).cast("B")


_LITTLE = sys.byteorder == "little"
_WIDE = {2: "<u2", 4: "<u4"}


def _np() -> Any:
    """numpy transposes byte planes in C (pure Python managed 700 MB/s); imported on first use."""
    import numpy

    return numpy


class Choice(NamedTuple):
    """How a chunk is best stored: its codec, and for byte planes which planes are worth compressing."""

    codec: int
    squeeze: tuple[bool, ...] = ()

    def rotated(self, by: int) -> Choice:
        """The same choice for a chunk starting ``by`` bytes later in its file: plane ``i`` of that chunk
        is plane ``i + by`` of this one (chunk boundaries fall anywhere, so a word's bytes change planes)."""
        n = len(self.squeeze)
        return Choice(self.codec, tuple(self.squeeze[(i + by) % n] for i in range(n))) if n else self


def choose(data: bytes | memoryview, *, level: int = LEVEL) -> Choice:
    """The codec for a chunk larger than ``4 * SAMPLE``, decided on a sample from its middle: measured on
    fp32, fp16, bf16, int8 and MiniLM chunks, the same sizes within 0.1% at 1.7-3.7x the speed of
    compressing every chunk three ways.  The sample also says which byte planes compress: the others
    (an fp32 chunk's three mantissa planes, an fp16 chunk's low byte) are stored raw without being
    compressed first, which was 70% of an fp32 chunk's zstd time for nothing."""
    middle = (len(data) // 2) & ~3
    best_codec, sample, squeeze = _smallest(_cctx(level), bytes(data[middle : middle + SAMPLE]))
    if _size(sample) > SAMPLE * (1 - MIN_SAVING):
        return Choice(RAW)
    return Choice(best_codec, tuple(squeeze))


def encode(data: bytes | memoryview, *, level: int = LEVEL, choice: Choice | None = None) -> bytes:
    """Encode one chunk with the codec that packs it smallest, or raw.

    A chunk of at most ``4 * SAMPLE`` bytes is compressed every way; a larger
    one as ``choice`` says, else as ``choose`` decides on a sample of it (a
    caller encoding many chunks of one tensor decides once for several).
    Compression that saves less than ``MIN_SAVING`` is dropped for raw.
    """
    return b"".join(encode_parts(data, level=level, choice=choice))


def encode_parts(data: bytes | memoryview, *, level: int = LEVEL,
                 choice: Choice | None = None) -> list[bytes | memoryview]:  # fmt: skip
    """``encode``'s result in the parts it is made of (the codec byte first), for a writer that joins them
    anyway: a pack builder copies each once, into its pack."""
    cctx = _cctx(level)
    raw = bytes(data)
    if len(raw) <= 4 * SAMPLE:
        best_codec, best, _ = _smallest(cctx, raw)
    else:
        best_codec, squeeze = choice or choose(raw, level=level)
        if best_codec == RAW:
            return [bytes([RAW]), raw]
        best = ([cctx[0].compress(raw)] if best_codec == ZSTD
                else _encode_planes(cctx[1], raw, _WORD[best_codec], list(squeeze))[0])  # fmt: skip
    if _size(best) > len(raw) * (1 - MIN_SAVING):
        return [bytes([RAW]), raw]
    return [bytes([best_codec]), *best]


def _smallest(cctx: tuple[Any, Any], raw: bytes) -> tuple[int, list[bytes | memoryview], list[bool]]:
    """The codec that packs ``raw`` smallest, its pieces, and for byte planes which planes compressed."""
    best_codec, best, squeeze = ZSTD, [cctx[0].compress(raw)], list[bool]()
    for codec, word in _WORD.items():
        packed, compressed = _encode_planes(cctx[1], raw, word)
        if _size(packed) < _size(best):
            best_codec, best, squeeze = codec, packed, compressed
    return best_codec, best, squeeze


def _size(pieces: list[bytes | memoryview]) -> int:
    return sum(len(p) for p in pieces)


def _encode_planes(cctx: Any, raw: bytes, word: int, squeeze: list[bool] | None = None
                   ) -> tuple[list[bytes | memoryview], list[bool]]:  # fmt: skip
    """The pieces of a byte-plane encoding (headers, planes, tail), and which planes are compressed.
    ``squeeze``: which planes to try compressing (all when None); a plane that does not shrink is raw."""
    *plns, tail = planes(raw, word)
    heads: list[bytes | memoryview] = []
    bodies: list[bytes | memoryview] = []
    compressed: list[bool] = []
    for i, p in enumerate(plns):
        z = cctx.compress(p) if squeeze is None or squeeze[i] else None
        smaller = z is not None and len(z) < len(p) * (1 - MIN_SAVING)
        stored = z if z is not None and smaller else p
        heads.append(_PLANE.pack(1 if smaller else 0, len(stored)))
        bodies.append(stored)
        compressed.append(smaller)
    return [*heads, *bodies, tail], compressed


def decode(blob: bytes | memoryview, raw_length: int, expected_id: bytes) -> bytes | memoryview:
    """Decode one chunk and prove it is the chunk asked for.

    Returns a buffer, not always ``bytes``: a raw chunk is a view into ``blob``
    and planes are interleaved into a numpy buffer, sparing a copy per chunk.
    """
    if not blob:
        raise CorruptObject("empty encoded chunk")
    codec, payload = blob[0], memoryview(blob)[1:]
    what = f"chunk {expected_id.hex()[:16]}"
    out: bytes | memoryview
    if codec == RAW:
        out = payload
    elif codec == ZSTD:
        out = _unzstd(payload, raw_length, what)
    elif codec in _WORD:
        out = _decode_planes(payload, raw_length, _WORD[codec], what)
    else:
        raise CorruptObject(f"{what}: unknown codec byte {codec}")
    if len(out) != raw_length:
        raise CorruptObject(f"{what}: decoded {len(out)} bytes, expected {raw_length}")
    if chunk_id(out) != expected_id:
        raise CorruptObject(f"{what}: decoded bytes do not match the chunk id")
    return out


def _decode_planes(payload: memoryview, raw_length: int, word: int, what: str) -> bytes | memoryview:
    plane = raw_length // word
    pos = _PLANE.size * word
    if len(payload) < pos:
        raise CorruptObject(f"{what}: truncated plane headers")
    parts: list[bytes | memoryview] = []
    for i in range(word):
        kind, stored = _PLANE.unpack_from(payload, i * _PLANE.size)
        body = payload[pos : pos + stored]
        if len(body) != stored:
            raise CorruptObject(f"{what}: plane {i} is truncated")
        if kind == 0:
            if stored != plane:
                raise CorruptObject(f"{what}: raw plane {i} has {stored} bytes, expected {plane}")
            parts.append(body)
        elif kind == 1:
            parts.append(_unzstd(body, plane, what))
        else:
            raise CorruptObject(f"{what}: plane {i} has unknown kind {kind}")
        pos += stored
    tail = payload[pos:]
    if len(tail) != raw_length % word:
        raise CorruptObject(f"{what}: {len(tail)} trailing bytes, expected {raw_length % word}")
    return interleave([*parts, tail], word)


def _unzstd(frame: bytes | memoryview, expected: int, what: str) -> bytes:
    z = _z()
    try:
        declared = z.frame_content_size(frame)
    except z.ZstdError as e:
        raise CorruptObject(f"{what}: not a zstd frame ({e})") from None
    if declared != expected:
        raise CorruptObject(f"{what}: frame declares {declared} bytes, the manifest says {expected}")
    try:
        out = _dctx().decompress(frame, max_output_size=expected)
    except z.ZstdError as e:
        raise CorruptObject(f"{what}: zstd frame is damaged ({e})") from None
    return out
