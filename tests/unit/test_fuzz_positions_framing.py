"""Property-based fuzzing of position codes (common/codecs/positions.py) and BlobChunk framing
(common/rpc/framing.py)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import event, given
from hypothesis import strategies as st

from fused.common.codecs.positions import (
    METHODS,
    PositionCodecError,
    decode_positions,
    encode_positions,
    method_of,
)
from fused.common.codecs.varint import varint
from fused.common.rpc.framing import encode_blob_chunk
from fused.proto.v1 import common_pb2
from tests.unit.fuzzing import (
    GIB,
    accept_or_reject,
    fuzz,
    mutate_bytes,
    position_sets,
    redeclare,
    rle_frame,
    traced_peak,
    zstd_frame,
)

# --------------------------------------------------------------------------- positions


def _check_positions_result(result: torch.Tensor, n: int, max_count: int | None) -> None:
    assert result.dtype == torch.int64 and result.dim() == 1
    if result.numel():
        assert int(result[0]) >= 0 and int(result[-1]) < n
        assert bool((result[1:] > result[:-1]).all())
    if max_count is not None:
        assert result.numel() <= max_count


def _seal(head: bytes) -> bytes:
    return head + zlib.crc32(head).to_bytes(4, "little")


@fuzz(400)
@given(mask=position_sets())
def test_positions_round_trip_exactly_and_respect_max_count(
    mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int],
) -> None:
    positions, n = mask
    payload = encode_positions(positions, n)
    event(method_of(payload))  # shows in --hypothesis-show-statistics: every method is hit
    count = int(positions.size)
    out = decode_positions(payload, n, max_count=count)
    assert torch.equal(out, torch.from_numpy(positions))
    assert encode_positions(torch.from_numpy(positions), n) == payload  # deterministic
    if count:
        with pytest.raises(PositionCodecError, match="max_count"):
            decode_positions(payload, n, max_count=count - 1)


def test_position_strategy_reaches_every_method() -> None:
    seen: set[str] = set()

    @fuzz(150)
    @given(mask=position_sets())
    def collect(mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int]) -> None:
        seen.add(method_of(encode_positions(*mask)))

    collect()
    assert seen == set(METHODS.values())


ns = st.integers(1, 3000) | st.sampled_from([2**20, 2**40])


@fuzz(400)
@given(
    tag=st.sampled_from(sorted(METHODS)) | st.integers(0, 255),
    body=st.binary(max_size=64),
    n=ns,
    max_count=st.none() | st.integers(0, 3000),
    sealed=st.booleans(),
)
def test_positions_decode_of_arbitrary_bytes_only_raises_position_error(
    tag: int, body: bytes, n: int, max_count: int | None, sealed: bool
) -> None:
    if n > 2**20 and max_count is None:
        max_count = 3000  # an unbounded complement of 2**40 positions is a legitimate 1 TiB
    payload = _seal(bytes([tag]) + body) if sealed else bytes([tag]) + body
    result = accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


@pytest.mark.parametrize("how", ["bytes", "count", "declared-size", "smaller-n", "larger-n"])
@fuzz(100)
@given(mask=position_sets(), reseal=st.booleans(), bounded=st.booleans(), data=st.data())
def test_positions_decode_of_mutated_payloads_only_raises_position_error(
    how: str,
    mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int],
    reseal: bool,
    bounded: bool,
    data: st.DataObject,
) -> None:
    positions, n = mask
    payload = encode_positions(positions, n)
    if how == "smaller-n" and n > 1:  # an intact payload for a tensor of another size
        n = data.draw(st.integers(max(1, n // 2), n - 1))
    elif how == "larger-n":
        n = data.draw(st.integers(n + 1, 2 * n))
    elif how == "count":  # lie about the number of positions (the varint after the tag)
        rest = payload[1:]
        skip = next(i for i, b in enumerate(rest) if b < 0x80) + 1
        lie = data.draw(st.integers(0, 2**64 - 1) | st.integers(0, 2 * n))
        payload = payload[:1] + varint(lie) + rest[skip:]
    elif how == "declared-size" and payload[0] in (3, 4):
        payload = redeclare(data, payload)
    else:
        payload = mutate_bytes(data, payload)
    if reseal and len(payload) >= 5:  # a valid checksum, so the structural checks must hold
        payload = _seal(payload[:-4])
    max_count = int(positions.size) if bounded else None
    result = accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


@fuzz(400)
@given(
    tag=st.sampled_from(sorted(METHODS)),
    n=st.integers(1, 64),
    count=st.integers(0, 12),
    m=st.integers(1, 70),
    width=st.integers(0, 3),
    content=st.binary(max_size=24),
    data=st.data(),
)
def test_positions_decode_of_well_framed_hostile_bodies_only_raises_position_error(
    tag: int, n: int, count: int, m: int, width: int, content: bytes, data: st.DataObject
) -> None:
    # Honest framing (counts, sizes, checksum) around arbitrary content, so that decoding
    # gets past the framing checks and into the gap arithmetic.
    if tag in (1, 2):  # Golomb: varint count | varint m | bits
        body = varint(count) + varint(m) + content
    elif tag == 3:  # planes: varint count | width | zstd frame of count * width bytes
        raw = data.draw(st.binary(min_size=count * width, max_size=count * width))
        body = varint(count) + bytes([width]) + zstd_frame(raw)
    else:  # bitmap: zstd frame of ceil(n / 8) bytes
        size = (n + 7) // 8
        body = zstd_frame(data.draw(st.binary(min_size=size, max_size=size)))
    max_count = data.draw(st.none() | st.integers(0, n))
    payload = _seal(bytes([tag]) + body)
    result = accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


def test_positions_complement_out_of_range_is_a_position_error() -> None:
    # Complement payload for n=10 whose 2 absent "positions" (gaps 9, 9) reach index 19.
    bits = np.array([1] * 9 + [0] + [1] * 9 + [0] + [0] * 4, dtype=np.uint8)
    payload = _seal(bytes([2]) + varint(2) + varint(1) + np.packbits(bits).tobytes())
    with pytest.raises(PositionCodecError, match="outside"):
        decode_positions(payload, 10)


def test_positions_bitmap_bomb_is_refused_before_allocating_it() -> None:
    n = 4096  # an honest bitmap holds 512 bytes
    payload = _seal(bytes([4]) + rle_frame(GIB, GIB))
    errors: list[str] = []

    def decode() -> None:
        with pytest.raises(PositionCodecError) as info:
            decode_positions(payload, n)
        errors.append(str(info.value))

    assert traced_peak(decode) < 4 * 2**20
    assert str(GIB) in errors[0] and "decompression bomb" in errors[0]


# --------------------------------------------------------------------------- BlobChunk


uint64s = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 127, 128, 2**63, 2**64 - 1])


@fuzz(300)
@given(blob_id=st.text(max_size=70), offset=uint64s, chunk=st.binary(max_size=300), total=uint64s)
def test_blob_chunk_framing_equals_protobuf_and_round_trips(
    blob_id: str, offset: int, chunk: bytes, total: int
) -> None:
    wire = encode_blob_chunk(blob_id, offset, chunk, total)
    expected = common_pb2.BlobChunk(blob_id=blob_id, offset=offset, data=chunk, total_size=total)
    assert wire == expected.SerializeToString()
    parsed = common_pb2.BlobChunk.FromString(wire)
    assert (parsed.blob_id, parsed.offset, parsed.data, parsed.total_size) == (
        blob_id,
        offset,
        chunk,
        total,
    )


@pytest.mark.parametrize("value", [-1, -(2**70), 2**64, 2**80])
def test_blob_chunk_out_of_range_integers_raise_like_protobuf(value: int) -> None:
    # A negative value used to loop forever in the varint writer.
    with pytest.raises(ValueError):
        common_pb2.BlobChunk(offset=value)
    with pytest.raises(ValueError, match="varint"):
        encode_blob_chunk("id", value, b"x", 1)
    with pytest.raises(ValueError, match="varint"):
        encode_blob_chunk("id", 0, b"x", value)


@fuzz(300)
@given(
    blob_id=st.text(max_size=70),
    offset=uint64s,
    chunk=st.binary(max_size=64),
    total=uint64s,
    data=st.data(),
)
def test_blob_chunk_parsing_of_mutated_frames_only_raises_decode_error(
    blob_id: str, offset: int, chunk: bytes, total: int, data: st.DataObject
) -> None:
    # Uploads are parsed by protobuf: a corrupt frame is a DecodeError or some valid message.
    wire = mutate_bytes(data, encode_blob_chunk(blob_id, offset, chunk, total))
    try:
        parsed = common_pb2.BlobChunk.FromString(wire)
    except DecodeError:
        return
    assert 0 <= parsed.offset < 2**64 and 0 <= parsed.total_size < 2**64
    assert isinstance(parsed.blob_id, str) and isinstance(parsed.data, bytes)
