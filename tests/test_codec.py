import os
import struct

import numpy as np
import pytest
import zstandard

from cas import CorruptObject
from cas.content import codec
from cas.content.digest import chunk_id
from tests.support import synth

RNG = np.random.default_rng(7)


def chunk_of(dtype: str, n: int = 64 * 1024) -> bytes:
    return synth.weights(RNG, (n // {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}[dtype],), dtype).tobytes()


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "I8"])
def test_round_trip_of_weights(dtype):
    data = chunk_of(dtype)
    enc = codec.encode(data)
    assert codec.decode(enc, len(data), chunk_id(data)) == data


def test_byte_grouping_beats_plain_zstd_on_fp32():
    data = chunk_of("F32")
    plain = len(zstandard.ZstdCompressor(level=3).compress(data))
    enc = codec.encode(data)
    assert enc[0] == codec.ZSTD_BG4
    assert len(enc) < 0.95 * plain
    assert len(enc) < 0.87 * len(data)


def test_random_bytes_stay_raw():
    data = os.urandom(50_000)
    enc = codec.encode(data)
    assert enc[0] == codec.RAW and enc[1:] == data


def test_text_is_compressed_with_plain_zstd():
    data = b"the quick brown fox jumps over the lazy dog\n" * 1000
    enc = codec.encode(data)
    assert enc[0] == codec.ZSTD and len(enc) < len(data) // 10


CASES = [("F32", 16 << 10, codec.ZSTD_BG4), ("F16", 64 << 10, codec.ZSTD_BG2), ("BF16", 200 << 10, codec.ZSTD_BG2)]


@pytest.mark.parametrize(("dtype", "n", "expected"), CASES)  # 16 KiB: chosen on the whole chunk; larger: on a sample
def test_weights_get_byte_grouping_whether_chosen_on_the_whole_chunk_or_a_sample(dtype, n, expected):
    enc = codec.encode(chunk_of(dtype, n))
    assert enc[0] == expected


@pytest.mark.parametrize("middle_is_noise", [True, False])
def test_a_chunk_unlike_its_sample_round_trips_and_never_grows(middle_is_noise):
    a, b = (bytes(40_000), os.urandom(20_000)) if middle_is_noise else (os.urandom(40_000), bytes(20_000))
    data = a + b + a
    enc = codec.encode(data)
    assert len(enc) <= len(data) + 1
    assert codec.decode(enc, len(data), chunk_id(data)) == data


@pytest.mark.parametrize("n", [0, 1, 3, 5, 7, 1001])
def test_planes_interleave_inverse_for_odd_lengths(n):
    data = os.urandom(n)
    for word in (2, 4):
        assert codec.interleave(codec.planes(data, word), word) == data


@pytest.mark.parametrize("n", [1, 3, 4097, 65537])
def test_round_trip_of_odd_lengths_that_compress(n):
    data = (chunk_of("F32") * 2)[:n]
    assert codec.decode(codec.encode(data), n, chunk_id(data)) == data


def test_decode_rejects_truncated_and_inconsistent_planes():
    data = chunk_of("F32")
    enc = codec.encode(data)
    assert enc[0] == codec.ZSTD_BG4
    for bad in (enc[:10], enc[:-100], enc + b"x"):
        with pytest.raises(CorruptObject):
            codec.decode(bad, len(data), chunk_id(data))
    with pytest.raises(CorruptObject):
        codec.decode(enc, len(data) - 4, chunk_id(data))


def test_decode_rejects_a_frame_that_declares_another_size():
    data = b"a" * 10_000
    enc = codec.encode(data)
    with pytest.raises(CorruptObject, match="declares 10000 bytes, the manifest says 100"):
        codec.decode(enc, 100, chunk_id(data))


def test_decode_refuses_a_bomb_without_allocating_its_claim():
    # A frame without a content size that expands far beyond the expected length.
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20))
    with pytest.raises(CorruptObject, match="frame declares"):
        codec.decode(bytes([codec.ZSTD]) + bomb, 1000, b"\0" * 32)


def test_decode_detects_flipped_bits():
    data = chunk_of("F16")
    enc = bytearray(codec.encode(data))
    enc[-5] ^= 0x01
    with pytest.raises(CorruptObject):
        codec.decode(bytes(enc), len(data), chunk_id(data))


def test_decode_detects_wrong_chunk_id_on_raw():
    data = os.urandom(1000)
    with pytest.raises(CorruptObject, match="do not match the chunk id"):
        codec.decode(bytes([codec.RAW]) + data, len(data), chunk_id(b"other"))


def test_decode_rejects_unknown_codec_and_empty_input():
    with pytest.raises(CorruptObject, match="unknown codec byte 9"):
        codec.decode(b"\x09abc", 3, chunk_id(b"abc"))
    with pytest.raises(CorruptObject, match="empty"):
        codec.decode(b"", 0, chunk_id(b""))


@pytest.mark.parametrize("codec_byte", [codec.ZSTD_BG2, codec.ZSTD_BG4])
@pytest.mark.parametrize("wrong", [-1, 1, 7])
def test_a_raw_plane_of_the_wrong_length_is_a_corrupt_object_not_a_numpy_error(codec_byte, wrong):
    """Byte planes stored raw whose lengths do not add up to the declared chunk: one CorruptObject, whatever
    the planes hold (a numpy reshape error would escape every caller's handling)."""
    word = {codec.ZSTD_BG2: 2, codec.ZSTD_BG4: 4}[codec_byte]
    raw_length = 1000
    plane = raw_length // word
    sizes = [plane] * word
    sizes[0] += wrong
    header = b"".join(struct.pack(">BI", 0, n) for n in sizes)
    blob = bytes([codec_byte]) + header + bytes(sum(sizes))
    with pytest.raises(CorruptObject, match=rf"raw plane 0 has {plane + wrong} bytes, expected {plane}"):
        codec.decode(blob, raw_length, b"\0" * 32)


def test_a_raw_plane_cut_short_is_a_corrupt_object_naming_the_plane():
    """Plane headers that claim more bytes than follow: the truncated plane is named, not a numpy error."""
    word, raw_length = 4, 1000
    plane = raw_length // word
    header = b"".join(struct.pack(">BI", 0, plane) for _ in range(word))
    blob = bytes([codec.ZSTD_BG4]) + header + bytes(plane * word - 10)
    with pytest.raises(CorruptObject, match="plane 3 is truncated"):
        codec.decode(blob, raw_length, b"\0" * 32)


def test_bytes_after_the_last_plane_are_reported_as_trailing_bytes():
    word, raw_length = 2, 1000
    header = b"".join(struct.pack(">BI", 0, raw_length // word) for _ in range(word))
    blob = bytes([codec.ZSTD_BG2]) + header + bytes(raw_length) + b"xyz"
    with pytest.raises(CorruptObject, match="3 trailing bytes, expected 0"):
        codec.decode(blob, raw_length, b"\0" * 32)


def test_a_raw_chunk_of_another_length_says_how_long_it_is():
    data = os.urandom(1000)
    with pytest.raises(CorruptObject, match="decoded 1001 bytes, expected 1000"):
        codec.decode(bytes([codec.RAW]) + data + b"x", len(data), chunk_id(data))
