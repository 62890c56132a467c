from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import torch
import zstandard

from fused.common.codecs.positions import (
    METHODS,
    TAG_GOLOMB,
    TAG_GOLOMB_COMPLEMENT,
    TAG_ZSTD_BITMAP,
    TAG_ZSTD_PLANES,
    PositionCodecError,
    decode_positions,
    encode_positions,
    entropy_bound_bytes,
    method_of,
)
from fused.common.ml.adapters import mask_indices

N = 200_000
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]


def _seal(tag: int, body: bytes) -> bytes:
    """A payload with a valid checksum, so that the structural checks are what fails."""
    head = bytes([tag]) + body
    return head + zlib.crc32(head).to_bytes(4, "little")


def _frame(raw: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(raw)


def _roundtrip(positions: torch.Tensor, n: int) -> bytes:
    data = encode_positions(positions, n)
    out = decode_positions(data, n, max_count=int(positions.numel()))
    assert out.dtype == torch.int64
    assert torch.equal(out, positions.to(torch.int64))
    return data


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize("density", DENSITIES)
def test_project_masks_round_trip_within_110_percent_of_entropy(density: float) -> None:
    positions = mask_indices("layer.weight", N, density, seed=11)
    data = _roundtrip(positions, N)
    bound = entropy_bound_bytes(N, int(positions.numel()))
    assert len(data) <= 1.10 * bound, (density, len(data), bound, method_of(data))
    assert encode_positions(positions.numpy(), N) == data  # deterministic, numpy == torch


def test_dense_masks_use_the_complement() -> None:
    positions = mask_indices("dense", N, 0.9, seed=2)
    data = _roundtrip(positions, N)
    assert data[0] == TAG_GOLOMB_COMPLEMENT
    assert len(data) <= 1.10 * entropy_bound_bytes(N, int(positions.numel()))


def test_structured_masks_pick_zstd() -> None:
    strided = torch.arange(0, N, 4, dtype=torch.int64)
    data = _roundtrip(strided, N)
    assert data[0] in (TAG_ZSTD_PLANES, TAG_ZSTD_BITMAP) and len(data) < 200
    runs = torch.cat([torch.arange(1000, 60_000), torch.arange(120_000, 190_000)])
    data = _roundtrip(runs, N)
    assert data[0] in (TAG_ZSTD_PLANES, TAG_ZSTD_BITMAP) and len(data) < 200


def test_entropy_bound() -> None:
    assert entropy_bound_bytes(8, 4) == pytest.approx(1.0)
    assert entropy_bound_bytes(10, 0) == 0.0 and entropy_bound_bytes(10, 10) == 0.0
    with pytest.raises(ValueError):
        entropy_bound_bytes(10, 11)


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize(
    ("values", "n"),
    [
        ([], 1),
        ([], 1000),
        ([0], 1),
        ([0], 1000),
        ([999], 1000),
        ([0, 999], 1000),
        (list(range(1000)), 1000),
        (list(range(999)), 1000),
        (list(range(1, 1000)), 1000),
        ([5], 1 << 40),
    ],
)
def test_edge_cases_round_trip(values: list[int], n: int) -> None:
    data = _roundtrip(torch.tensor(values, dtype=torch.int64), n)
    assert data[0] in METHODS and len(data) <= 16


def test_integer_dtypes_accepted() -> None:
    expected = encode_positions(torch.tensor([1, 7, 200]), 256)
    assert encode_positions(np.array([1, 7, 200], dtype=np.uint8), 256) == expected
    assert encode_positions(torch.tensor([1, 7, 200], dtype=torch.int32), 256) == expected


@pytest.mark.parametrize(
    "values",
    [[3, 3], [5, 2], [-1, 4], [0, 10], [1.0, 2.0]],
    ids=["duplicate", "decreasing", "negative", "out-of-range", "float"],
)
def test_encode_rejects_invalid_positions(values: list[float]) -> None:
    with pytest.raises(ValueError):
        encode_positions(torch.tensor(values), 10)


def test_encode_rejects_bad_shape_and_n() -> None:
    with pytest.raises(ValueError):
        encode_positions(torch.tensor([[1, 2]]), 10)
    with pytest.raises(ValueError):
        encode_positions(torch.tensor([0]), 0)


# --------------------------------------------------------------------------- malformed


def _golomb(body: bytes) -> bytes:
    return _seal(TAG_GOLOMB, body)


def test_handcrafted_golomb_payload_decodes() -> None:
    # count 1, m 1, unary gap 3 = 1110 (+ zero padding): position 3
    assert decode_positions(_golomb(b"\x01\x01\xe0"), 10).tolist() == [3]


MALFORMED = {
    "empty": (b"", "empty"),
    "bad tag": (_seal(0x00, b"\x01\x01\xe0"), "unknown method tag"),
    "bad tag high": (_seal(0x7F, b""), "unknown method tag"),
    "no body": (b"\x01\x00", "truncated"),
    "truncated quotients": (_golomb(b"\x02\x01\xfe"), "truncated"),
    "truncated varint": (_golomb(b"\x81"), "truncated"),
    "overlong varint": (_golomb(b"\x81\x00\x01\xe0"), "canonical"),
    "count over n": (_golomb(b"\x0b\x01\xff\xff"), "more than n"),
    "m over n": (_golomb(b"\x01\x0b\x00"), "outside [1, n"),
    "empty with m": (_golomb(b"\x00\x02"), "m = 1"),
    "gap beyond n": (_golomb(b"\x01\x01\xff\xf0"), "gap beyond n"),
    "sum beyond n": (_golomb(b"\x02\x01\xff\x7f\xc0"), "outside [0, 10)"),
    "trailing bytes": (_golomb(b"\x01\x01\xe0\x00"), "trailing bytes"),
    "nonzero padding": (_golomb(b"\x01\x01\xe1"), "padding"),
    "bad checksum": (_golomb(b"\x01\x01\xe0")[:-1] + b"\xff", "CRC-32"),
    "bitmap bomb": (_seal(TAG_ZSTD_BITMAP, _frame(bytes(1 << 20))), "bomb"),
    "bitmap no size": (_seal(TAG_ZSTD_BITMAP, _frame(bytes(2), False)), "content size"),
    "bitmap short": (_seal(TAG_ZSTD_BITMAP, _frame(b"\x01")), "exactly 2"),
    "bitmap not zstd": (_seal(TAG_ZSTD_BITMAP, b"\x01\x02\x03\x04\x05\x06"), "not a zstd frame"),
    "bitmap bits beyond n": (_seal(TAG_ZSTD_BITMAP, _frame(b"\x00\x04")), "beyond n"),
    "bitmap trailing": (_seal(TAG_ZSTD_BITMAP, _frame(b"\x01\x00") + b"\x00"), "decompressed"),
    "planes bomb": (_seal(TAG_ZSTD_PLANES, b"\x02\x01" + _frame(bytes(1 << 20))), "bomb"),
    "planes width": (_seal(TAG_ZSTD_PLANES, b"\x02\x02" + _frame(bytes(4))), "width"),
    "planes gap beyond n": (_seal(TAG_ZSTD_PLANES, b"\x01\x01" + _frame(b"\x0a")), "gap beyond"),
    "complement too many": (_seal(TAG_GOLOMB_COMPLEMENT, b"\x06\x01\x00"), "n // 2"),
    "bitmap too sparse": (_seal(TAG_ZSTD_BITMAP, _frame(bytes(2))), "too few"),
    "planes too many": (_seal(TAG_ZSTD_PLANES, b"\x06\x01" + _frame(bytes(6))), "outside [1"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_payloads_rejected(case: str) -> None:
    data, message = MALFORMED[case]
    with pytest.raises(PositionCodecError, match=re.escape(message)):
        decode_positions(data, 10)


def test_max_count_enforced_for_every_method() -> None:
    sparse = torch.tensor([1, 5, 9])
    golomb = encode_positions(sparse, 10)
    assert golomb[0] == TAG_GOLOMB
    full = encode_positions(torch.arange(10), 10)
    assert full[0] == TAG_GOLOMB_COMPLEMENT
    bitmap = _seal(TAG_ZSTD_BITMAP, _frame(b"\x22\x02"))  # positions 1, 5, 9
    planes = _seal(TAG_ZSTD_PLANES, b"\x03\x01" + _frame(b"\x01\x03\x03"))  # 1, 5, 9
    for data, count in [(golomb, 3), (full, 10), (bitmap, 3), (planes, 3)]:
        assert decode_positions(data, 10, max_count=count).numel() == count
        with pytest.raises(PositionCodecError, match="max_count"):
            decode_positions(data, 10, max_count=count - 1)


def test_bitmap_bounded_by_max_count_before_decompressing() -> None:
    data = _seal(TAG_ZSTD_BITMAP, _frame(bytes(N // 8)))
    with pytest.raises(PositionCodecError, match="max_count=100"):
        decode_positions(data, N, max_count=100)


def test_every_truncation_and_bit_flip_is_rejected() -> None:
    positions = mask_indices("small", 500, 0.1, seed=5)
    data = encode_positions(positions, 500)
    for cut in range(len(data)):
        with pytest.raises(PositionCodecError):
            decode_positions(data[:cut], 500)
    with pytest.raises(PositionCodecError):
        decode_positions(data + b"\x00", 500)
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PositionCodecError):
            decode_positions(bytes(flipped), 500)


def test_payload_for_a_larger_tensor_is_rejected() -> None:
    data = encode_positions(torch.tensor([3, 40_000]), 50_000)
    with pytest.raises(PositionCodecError):
        decode_positions(data, 1000)
