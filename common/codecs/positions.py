"""Compact, strictly validated encoding of a sparse mask's positions.

A mask is a sorted, strictly increasing set of flat indices into a tensor of ``n`` elements.
`encode_positions` tries every method below and keeps the smallest payload (ties go to the
lower tag), so the choice adapts to the density and to any structure in the mask:

``0x01`` Golomb gaps
    The gaps ``g_i = idx_i - idx_{i-1} - 1`` (``g_0 = idx_0``) are Golomb coded with the
    parameter ``m`` that minimises the exact size. Each gap is ``q * m + r``: ``q`` in unary,
    ``r`` in truncated binary. For a random mask of density rho the gaps are geometric, for
    which Golomb codes are optimal prefix codes: within a few percent of ``n * H(rho)``. To
    decode with vectorised numpy the bits are laid out as three streams: the first ``b - 1``
    bits of every remainder (``b = ceil(log2 m)``), then the one extra bit of the remainders
    that need ``b`` bits, then the unary quotients (``q`` ones and a zero each).
``0x02`` Golomb gaps of the complement
    The same, for the positions NOT in the mask: the better choice above 50% density. Only
    for masks of at least 50% density.
``0x03`` zstd of byte planes of the gaps
    The gaps as fixed-width little-endian integers, stored plane by plane (all low bytes,
    then all next bytes, ...), in one zstd frame. Wins on masks with repetitive gaps. Only
    tried up to 50% density (above, the bitmap is smaller before compression).
``0x04`` zstd of the bitmap
    The mask as ``ceil(n / 8)`` bytes (bit i of byte j is position 8 j + i), in one zstd
    frame. Wins on masks made of runs. Only for masks of at least n / 64 positions, so its
    raw size never exceeds 8 bytes per position.

Payload: ``tag (1 byte) | body | CRC-32 of tag and body (4 bytes, little-endian)``, with

* Golomb bodies ``varint count | varint m | bits``: the streams, MSB first, zero padded to a
  whole byte (``count = 0``: ``m = 1`` and no bits);
* plane bodies ``varint count | width (1 byte) | zstd frame of count * width bytes``;
* bitmap bodies ``zstd frame of ceil(n / 8) bytes``.

Varints are canonical unsigned LEB128. Every zstd frame must declare its content size, which
must be exactly the size the header implies (checked before decompressing, and decompression
is capped at it). `decode_positions` checks everything else too: counts against ``n`` and
``max_count`` before any work proportional to them, padding bits, trailing bytes, the range
and strict order of the decoded positions, and finally the checksum. Any failure raises
`PositionCodecError` (a ValueError).

Encoding is deterministic: the same positions and ``n`` always give the same bytes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import zstandard

__all__ = [
    "MAX_N",
    "METHODS",
    "PositionCodecError",
    "decode_positions",
    "encode_positions",
    "entropy_bound_bytes",
    "method_of",
]

TAG_GOLOMB = 0x01
TAG_GOLOMB_COMPLEMENT = 0x02
TAG_ZSTD_PLANES = 0x03
TAG_ZSTD_BITMAP = 0x04
METHODS = {
    TAG_GOLOMB: "golomb",
    TAG_GOLOMB_COMPLEMENT: "golomb-complement",
    TAG_ZSTD_PLANES: "zstd-planes",
    TAG_ZSTD_BITMAP: "zstd-bitmap",
}
MAX_N = 1 << 40  # far beyond any tensor; keeps every intermediate well inside int64
ZSTD_LEVEL = 19
_CRC_BYTES = 4
_MAX_VARINT_BYTES = 10
_BITMAP_RATIO = 64  # bitmaps only for count >= n / 64: never more raw bytes than 8-byte gaps

Int64Array = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]


class PositionCodecError(ValueError):
    """A position payload is malformed, truncated, corrupt or out of bounds."""


# --------------------------------------------------------------------------- helpers


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise ValueError(f"n must be an integer in [1, {MAX_N}], got {n!r}")


def entropy_bound_bytes(n: int, count: int) -> float:
    """Information bound ``n * H(count / n) / 8`` bytes, H the binary entropy in bits."""
    _check_n(n)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n:
        raise ValueError(f"count must be an integer in [0, n={n}], got {count!r}")
    if count in (0, n):
        return 0.0
    p = count / n
    return n * (-p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)) / 8.0


def varint(value: int) -> bytes:
    """LEB128, as protobuf and this format write unsigned integers."""
    if not 0 <= value < 1 << 64:  # a negative value would never terminate the loop
        raise ValueError(f"varint value must be in [0, 2**64), got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _readvarint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """Canonical LEB128 at ``data[pos:]``: (value, position after it)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise PositionCodecError(f"position payload is truncated inside its {what}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise PositionCodecError(f"position payload's {what} is not canonically encoded")
            return value, pos + i + 1
    raise PositionCodecError(f"position payload's {what} is longer than {_MAX_VARINT_BYTES} bytes")


def _as_positions(indices: torch.Tensor | npt.NDArray[np.integer], n: int) -> Int64Array:
    """Validate ``indices`` (1-D integers, strictly increasing, in [0, n)) as int64 numpy."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"positions must be integers, got {indices.dtype}")
        array: npt.NDArray[Any] = indices.detach().cpu().numpy()
    elif isinstance(indices, np.ndarray):
        array = indices
    else:
        raise ValueError(f"positions must be a torch.Tensor or numpy array, got {type(indices)}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"positions must be integers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {tuple(array.shape)}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= n:
            raise ValueError(f"positions must lie in [0, {n}), got range [{low}, {high}]")
    out = array.astype(np.int64)
    if out.size > 1 and not bool(np.all(out[1:] > out[:-1])):
        raise ValueError("positions must be strictly increasing (sorted, no duplicates)")
    return out


def _check_positions(positions: Int64Array, n: int) -> None:
    """Decoded positions must be strictly increasing and in [0, n)."""
    if positions.size:
        if int(positions[0]) < 0 or int(positions[-1]) >= n:
            raise PositionCodecError(f"position payload holds positions outside [0, {n})")
        if positions.size > 1 and not bool(np.all(positions[1:] > positions[:-1])):
            raise PositionCodecError("position payload's positions are not strictly increasing")


def _gaps(positions: Int64Array) -> Int64Array:
    """g_0 = p_0, g_i = p_i - p_{i-1} - 1: all >= 0 for strictly increasing positions."""
    return np.diff(positions, prepend=np.int64(-1)) - 1


def _complement(positions: Int64Array, n: int) -> Int64Array:
    keep = np.ones(n, dtype=bool)
    keep[positions] = False
    return np.flatnonzero(keep).astype(np.int64)


# --------------------------------------------------------------------------- Golomb


def _golomb_layout(m: int) -> tuple[int, int]:
    """(prefix width w, threshold u) of truncated binary remainders for parameter m.

    With b = ceil(log2 m) and u = 2**b - m, a remainder r < u is its w = b - 1 bits; one
    r >= u is the b bits of r + u, whose first b - 1 bits are >= u, plus one extra bit.
    """
    if m == 1:
        return 0, 1  # remainders are all 0: no bits; u = 1 so that no prefix is "big"
    b = (m - 1).bit_length()
    return b - 1, (1 << b) - m


def _golomb_bits(gaps: Int64Array, m: int) -> int:
    width, u = _golomb_layout(m)
    q = gaps // m
    r = gaps - q * m
    return int(gaps.size * (width + 1) + np.count_nonzero(r >= u) + int(q.sum()))


def _candidate_ms(gaps: Int64Array, n: int) -> list[int]:
    """Parameters near the optimum for geometric gaps of the observed mean."""
    mean = float(gaps.mean())
    cont = mean / (mean + 1.0)  # continuation probability of the matching geometric law
    center = 1 if cont <= 0.0 else max(1, math.ceil(math.log(1.0 + cont) / -math.log(cont)))
    cands = {max(1, min(n, center + d)) for d in range(-3, 4)}
    cands |= {min(n, 1 << max(0, center.bit_length() - 1 + d)) for d in (-1, 0, 1)}
    return sorted(cands)


def _msb_bits(values: Int64Array, width: int) -> UInt8Array:
    """The low ``width`` bits of each value, MSB first, flattened (values x width)."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)


def _golomb_body(positions: Int64Array, n: int) -> bytes:
    count = int(positions.size)
    if count == 0:
        return varint(0) + varint(1)
    gaps = _gaps(positions)
    m = min(_candidate_ms(gaps, n), key=lambda c: (_golomb_bits(gaps, c), c))
    width, u = _golomb_layout(m)
    q = gaps // m
    r = gaps - q * m
    big = r >= u
    coded = np.where(big, r + u, r)  # b bits where big, else b - 1 bits
    shifted: Int64Array = (coded >> big).astype(np.int64)
    prefix = _msb_bits(shifted, width)
    extra = (coded[big] & 1).astype(np.uint8)
    unary = np.ones(count + int(q.sum()), dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    bits = np.concatenate([prefix, extra, unary])
    return varint(count) + varint(m) + np.packbits(bits).tobytes()


def _complement_body(positions: Int64Array, n: int) -> bytes | None:
    if 2 * positions.size < n:  # sparse: the positions themselves are the smaller set
        return None
    return _golomb_body(_complement(positions, n), n)


def _golomb_decode(body: bytes, n: int, max_count: int | None, complement: bool) -> Int64Array:
    count, pos = _readvarint(body, 0, "count")
    if count > n:
        raise PositionCodecError(f"position payload declares {count} positions, more than n={n}")
    if complement and 2 * count > n:
        raise PositionCodecError(
            f"complement payload declares {count} absent positions, more than n // 2 = {n // 2}"
        )
    selected = n - count if complement else count
    if max_count is not None and selected > max_count:
        raise PositionCodecError(
            f"position payload holds {selected} positions, more than max_count={max_count}"
        )
    m, pos = _readvarint(body, pos, "Golomb parameter")
    if count == 0:
        if m != 1:
            raise PositionCodecError(f"empty Golomb payload must have m = 1, got {m}")
        if pos != len(body):
            raise PositionCodecError(f"position payload has {len(body) - pos} trailing bytes")
        positions = np.zeros(0, dtype=np.int64)
    else:
        if not 1 <= m <= n:
            raise PositionCodecError(f"Golomb parameter m={m} is outside [1, n={n}]")
        positions = _golomb_stream(body[pos:], n, count, m)
    if complement:
        _check_positions(positions, n)  # before indexing with them
        return _complement(positions, n)
    return positions


def _golomb_stream(stream: bytes, n: int, count: int, m: int) -> Int64Array:
    width, u = _golomb_layout(m)
    total = 8 * len(stream)
    # Every position needs >= width + 1 bits: refuse impossible counts before allocating.
    if count * (width + 1) > total:
        raise PositionCodecError(
            f"position payload is truncated: {count} positions with m={m} need at least "
            f"{count * (width + 1)} bits, it has {total}"
        )
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))
    prefix = np.zeros(count, dtype=np.int64)
    if width:
        planes = bits[: count * width].reshape(count, width)
        for j in range(width):
            prefix = (prefix << 1) | planes[:, j]
    cursor = count * width
    big = prefix >= u
    n_extra = int(np.count_nonzero(big))
    if cursor + n_extra + count > total:
        raise PositionCodecError("position payload is truncated inside its Golomb remainders")
    r = prefix.copy()
    r[big] = 2 * prefix[big] + bits[cursor : cursor + n_extra] - u
    cursor += n_extra
    ends = np.flatnonzero(bits[cursor:] == 0)[:count]
    if ends.size < count:
        raise PositionCodecError(
            f"position payload is truncated: {ends.size} of {count} Golomb quotients present"
        )
    used = cursor + int(ends[-1]) + 1
    if len(stream) != (used + 7) // 8:
        raise PositionCodecError(
            f"position payload has {len(stream) - (used + 7) // 8} trailing bytes"
        )
    if bits[used:].any():
        raise PositionCodecError("position payload's padding bits are not zero")
    q = np.diff(ends, prepend=np.int64(-1)) - 1
    if int(q.max()) > (n - 1) // m:
        raise PositionCodecError(f"position payload holds a gap beyond n={n}")
    return np.cumsum(q * m + r + 1) - 1


# --------------------------------------------------------------------------- zstd


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


def _planes_body(positions: Int64Array, n: int) -> bytes | None:
    count = int(positions.size)
    if count == 0 or 2 * count > n:  # dense: the bitmap is smaller raw and compresses as well
        return None
    gaps = _gaps(positions)
    width = max(1, (int(gaps.max()).bit_length() + 7) // 8)
    planes = gaps.astype("<u8").view(np.uint8).reshape(count, 8)[:, :width]
    raw = np.ascontiguousarray(planes.T).tobytes()
    return varint(count) + bytes([width]) + _compress(raw)


def _planes_decode(body: bytes, n: int, max_count: int | None) -> Int64Array:
    count, pos = _readvarint(body, 0, "count")
    if not 1 <= count <= n // 2:
        raise PositionCodecError(
            f"plane payload declares {count} positions, outside [1, n // 2 = {n // 2}]"
        )
    if max_count is not None and count > max_count:
        raise PositionCodecError(
            f"position payload holds {count} positions, more than max_count={max_count}"
        )
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


def _bitmap_body(positions: Int64Array, n: int) -> bytes | None:
    if n > _BITMAP_RATIO * positions.size:  # too sparse: the planes are smaller raw
        return None
    bitmap = np.zeros(n, dtype=np.uint8)
    bitmap[positions] = 1
    return _compress(np.packbits(bitmap, bitorder="little").tobytes())


def _bitmap_decode(body: bytes, n: int, max_count: int | None) -> Int64Array:
    if max_count is not None and n > _BITMAP_RATIO * max_count:
        raise PositionCodecError(
            f"bitmap payload for n={n} must hold more than n / {_BITMAP_RATIO} positions, "
            f"more than max_count={max_count}"
        )
    raw = _decompress(body, (n + 7) // 8, "bitmap payload")
    packed = np.frombuffer(raw, dtype=np.uint8)
    if n % 8 and int(packed[-1]) >> (n % 8):
        raise PositionCodecError(f"bitmap payload sets bits beyond n={n}")
    bits = np.unpackbits(packed, bitorder="little")[:n]
    count = int(np.count_nonzero(bits))
    if max_count is not None and count > max_count:
        raise PositionCodecError(
            f"position payload holds {count} positions, more than max_count={max_count}"
        )
    if n > _BITMAP_RATIO * count:
        raise PositionCodecError(
            f"bitmap payload holds {count} positions, too few for n={n} (under n / {_BITMAP_RATIO})"
        )
    return np.flatnonzero(bits).astype(np.int64)


# --------------------------------------------------------------------------- API


def _encoders(n: int) -> dict[int, Callable[[Int64Array], bytes | None]]:
    return {
        TAG_GOLOMB: lambda p: _golomb_body(p, n),
        TAG_GOLOMB_COMPLEMENT: lambda p: _complement_body(p, n),
        TAG_ZSTD_PLANES: lambda p: _planes_body(p, n),
        TAG_ZSTD_BITMAP: lambda p: _bitmap_body(p, n),
    }


def encode_positions(indices: torch.Tensor | npt.NDArray[np.integer], n: int) -> bytes:
    """Smallest payload over all methods for ``indices`` (strictly increasing, in [0, n))."""
    _check_n(n)
    positions = _as_positions(indices, n)
    best: bytes | None = None
    for tag, encode in _encoders(n).items():
        body = encode(positions)
        if body is None:
            continue
        payload = bytes([tag]) + body
        if best is None or len(payload) < len(best):
            best = payload
    assert best is not None  # Golomb always applies
    return best + zlib.crc32(best).to_bytes(_CRC_BYTES, "little")


def method_of(data: bytes) -> str:
    """Name of the method a payload claims (its tag byte), without validating it."""
    if not data:
        raise PositionCodecError("position payload is empty")
    if data[0] not in METHODS:
        raise PositionCodecError(f"position payload has unknown method tag 0x{data[0]:02x}")
    return METHODS[data[0]]


def decode_positions(data: bytes, n: int, max_count: int | None = None) -> torch.Tensor:
    """Sorted int64 positions from an `encode_positions` payload; strict and bounded."""
    _check_n(n)
    if max_count is not None and (
        isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0
    ):
        raise ValueError(f"max_count must be None or a non-negative integer, got {max_count!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PositionCodecError(f"position payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    method_of(data)
    if len(data) < 1 + _CRC_BYTES:
        raise PositionCodecError(f"position payload is truncated: {len(data)} bytes")
    tag, body = data[0], data[1:-_CRC_BYTES]
    if tag == TAG_GOLOMB:
        positions = _golomb_decode(body, n, max_count, complement=False)
    elif tag == TAG_GOLOMB_COMPLEMENT:
        positions = _golomb_decode(body, n, max_count, complement=True)
    elif tag == TAG_ZSTD_PLANES:
        positions = _planes_decode(body, n, max_count)
    else:
        positions = _bitmap_decode(body, n, max_count)
    _check_positions(positions, n)
    stored = int.from_bytes(data[-_CRC_BYTES:], "little")
    if zlib.crc32(data[:-_CRC_BYTES]) != stored:
        raise PositionCodecError("position payload is corrupt: CRC-32 mismatch")
    return torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
