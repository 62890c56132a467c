"""What every position method shares: its error, the varints of its header, the gap transform
and the checks on decoded positions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MAX_VARINT_BYTES = 10

Int64Array = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]


class PositionCodecError(ValueError):
    """A position payload is malformed, truncated, corrupt or out of bounds."""


def read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """Canonical LEB128 at ``data[pos:]``: (value, position after it)."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise PositionCodecError(f"position payload is truncated inside its {what}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise PositionCodecError(f"position payload's {what} is not canonically encoded")
            return value, pos + i + 1
    raise PositionCodecError(f"position payload's {what} is longer than {MAX_VARINT_BYTES} bytes")


def check_max_count(count: int, max_count: int | None) -> None:
    """A payload may hold no more positions than the caller allows."""
    if max_count is not None and count > max_count:
        raise PositionCodecError(
            f"position payload holds {count} positions, more than max_count={max_count}"
        )


def check_positions(positions: Int64Array, n: int) -> None:
    """Decoded positions must be strictly increasing and in [0, n)."""
    if positions.size:
        if int(positions[0]) < 0 or int(positions[-1]) >= n:
            raise PositionCodecError(f"position payload holds positions outside [0, {n})")
        if positions.size > 1 and not bool(np.all(positions[1:] > positions[:-1])):
            raise PositionCodecError("position payload's positions are not strictly increasing")


def gaps_of(positions: Int64Array) -> Int64Array:
    """g_0 = p_0, g_i = p_i - p_{i-1} - 1: all >= 0 for strictly increasing positions."""
    return np.diff(positions, prepend=np.int64(-1)) - 1


def complement_of(positions: Int64Array, n: int) -> Int64Array:
    keep = np.ones(n, dtype=bool)
    keep[positions] = False
    return np.flatnonzero(keep).astype(np.int64)
