"""zstd-compressed position methods of `positions`: byte planes of the gaps (0x03) and the
bitmap (0x04). Every frame must declare exactly the size its header implies."""

from __future__ import annotations

import numpy as np
import zstandard

from fused.common.codecs.position_payload import (
    Int64Array,
    PositionCodecError,
    check_max_count,
    gaps_of,
    read_varint,
)
from fused.common.codecs.varint import varint

ZSTD_LEVEL = 19
BITMAP_RATIO = 64  # bitmaps only for count >= n / 64: never more raw bytes than 8-byte gaps


def _compress(raw: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_content_size=True, write_checksum=False, write_dict_id=False
    )
    return compressor.compress(raw)


def _decompress(frame: bytes, expected: int, what: str) -> bytes:
    """One zstd frame that must declare exactly ``expected`` bytes (checked first)."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise PositionCodecError(f"{what} is not a zstd frame: {exc}") from exc
    declared = params.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared == zstandard.CONTENTSIZE_ERROR:
        raise PositionCodecError(f"{what}'s zstd frame does not declare its content size")
    if declared != expected:
        raise PositionCodecError(
            f"{what}'s zstd frame declares {declared} bytes; an honest one holds exactly "
            f"{expected}" + (" (decompression bomb?)" if declared > expected else "")
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise PositionCodecError(
            f"{what} could not be decompressed (corrupt, truncated or trailing bytes): {exc}"
        ) from exc
    if len(raw) != expected:
        raise PositionCodecError(f"{what} decompressed to {len(raw)} bytes, expected {expected}")
    return raw


def _plane_width(n: int) -> int:
    """Bytes of the widest gap any mask over n elements can have (n - 1)."""
    return max(1, ((n - 1).bit_length() + 7) // 8)


def planes_body(positions: Int64Array, n: int) -> bytes | None:
    count = int(positions.size)
    if count == 0 or 2 * count > n:  # dense: the bitmap is smaller raw and compresses as well
        return None
    gaps = gaps_of(positions)
    width = max(1, (int(gaps.max()).bit_length() + 7) // 8)
    planes = gaps.astype("<u8").view(np.uint8).reshape(count, 8)[:, :width]
    raw = np.ascontiguousarray(planes.T).tobytes()
    return varint(count) + bytes([width]) + _compress(raw)


def planes_decode(body: bytes, n: int, max_count: int | None) -> Int64Array:
    count, pos = read_varint(body, 0, "count")
    if not 1 <= count <= n // 2:
        raise PositionCodecError(
            f"plane payload declares {count} positions, outside [1, n // 2 = {n // 2}]"
        )
    check_max_count(count, max_count)
    if pos >= len(body):
        raise PositionCodecError("position payload is truncated before its plane width")
    width = body[pos]
    if not 1 <= width <= _plane_width(n):
        raise PositionCodecError(f"plane width {width} is outside [1, {_plane_width(n)}] for n={n}")
    raw = _decompress(body[pos + 1 :], count * width, "plane payload")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(width, count)
    gaps = np.zeros(count, dtype=np.int64)
    for j in range(width - 1, -1, -1):
        gaps = (gaps << 8) | planes[j]
    if int(gaps.max()) > n - 1:
        raise PositionCodecError(f"position payload holds a gap beyond n={n}")
    return np.cumsum(gaps + 1) - 1


def bitmap_body(positions: Int64Array, n: int) -> bytes | None:
    if n > BITMAP_RATIO * positions.size:  # too sparse: the planes are smaller raw
        return None
    bitmap = np.zeros(n, dtype=np.uint8)
    bitmap[positions] = 1
    return _compress(np.packbits(bitmap, bitorder="little").tobytes())


def bitmap_decode(body: bytes, n: int, max_count: int | None) -> Int64Array:
    if max_count is not None and n > BITMAP_RATIO * max_count:
        raise PositionCodecError(
            f"bitmap payload for n={n} must hold more than n / {BITMAP_RATIO} positions, "
            f"more than max_count={max_count}"
        )
    raw = _decompress(body, (n + 7) // 8, "bitmap payload")
    packed = np.frombuffer(raw, dtype=np.uint8)
    if n % 8 and int(packed[-1]) >> (n % 8):
        raise PositionCodecError(f"bitmap payload sets bits beyond n={n}")
    bits = np.unpackbits(packed, bitorder="little")[:n]
    count = int(np.count_nonzero(bits))
    check_max_count(count, max_count)
    if n > BITMAP_RATIO * count:
        raise PositionCodecError(
            f"bitmap payload holds {count} positions, too few for n={n} (under n / {BITMAP_RATIO})"
        )
    return np.flatnonzero(bits).astype(np.int64)
