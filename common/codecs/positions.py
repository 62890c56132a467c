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

from fused.common.codecs.golomb_positions import complement_body, golomb_body, golomb_decode
from fused.common.codecs.position_payload import Int64Array, PositionCodecError, check_positions
from fused.common.codecs.zstd_positions import (
    bitmap_body,
    bitmap_decode,
    planes_body,
    planes_decode,
)

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
_CRC_BYTES = 4


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


def _encoders(n: int) -> dict[int, Callable[[Int64Array], bytes | None]]:
    return {
        TAG_GOLOMB: lambda p: golomb_body(p, n),
        TAG_GOLOMB_COMPLEMENT: lambda p: complement_body(p, n),
        TAG_ZSTD_PLANES: lambda p: planes_body(p, n),
        TAG_ZSTD_BITMAP: lambda p: bitmap_body(p, n),
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
        positions = golomb_decode(body, n, max_count, complement=False)
    elif tag == TAG_GOLOMB_COMPLEMENT:
        positions = golomb_decode(body, n, max_count, complement=True)
    elif tag == TAG_ZSTD_PLANES:
        positions = planes_decode(body, n, max_count)
    else:
        positions = bitmap_decode(body, n, max_count)
    check_positions(positions, n)
    stored = int.from_bytes(data[-_CRC_BYTES:], "little")
    if zlib.crc32(data[:-_CRC_BYTES]) != stored:
        raise PositionCodecError("position payload is corrupt: CRC-32 mismatch")
    return torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
