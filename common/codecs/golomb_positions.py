"""Golomb coding of the gaps between positions (methods 0x01 and 0x02 of `positions`).

Each gap is ``q * m + r``: ``q`` in unary, ``r`` in truncated binary, with the parameter ``m``
that minimises the exact size. The bits are laid out as three streams so that numpy decodes
them vectorised: the first ``b - 1`` bits of every remainder, the one extra bit of the
remainders that need ``b`` bits, then the unary quotients.
"""

from __future__ import annotations

import math

import numpy as np

from fused.common.codecs.position_payload import (
    Int64Array,
    PositionCodecError,
    UInt8Array,
    check_max_count,
    check_positions,
    complement_of,
    gaps_of,
    read_varint,
)
from fused.common.codecs.varint import varint


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


def golomb_body(positions: Int64Array, n: int) -> bytes:
    count = int(positions.size)
    if count == 0:
        return varint(0) + varint(1)
    gaps = gaps_of(positions)
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


def complement_body(positions: Int64Array, n: int) -> bytes | None:
    if 2 * positions.size < n:  # sparse: the positions themselves are the smaller set
        return None
    return golomb_body(complement_of(positions, n), n)


def golomb_decode(body: bytes, n: int, max_count: int | None, complement: bool) -> Int64Array:
    count, pos = read_varint(body, 0, "count")
    if count > n:
        raise PositionCodecError(f"position payload declares {count} positions, more than n={n}")
    if complement and 2 * count > n:
        raise PositionCodecError(
            f"complement payload declares {count} absent positions, more than n // 2 = {n // 2}"
        )
    selected = n - count if complement else count
    check_max_count(selected, max_count)
    m, pos = read_varint(body, pos, "Golomb parameter")
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
        check_positions(positions, n)  # before indexing with them
        return complement_of(positions, n)
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
