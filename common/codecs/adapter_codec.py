"""Wire format of FUSED adapter values ("fused-adapter-v3").

Both sides derive the mask from its seed and check its digest, so mask positions never travel.
What travels, per layout tensor (layout order), is how many of its mask positions hold a
nonzero value, which ones when some do not (dead units get no gradient, so often many are
zero), and those values in mask order: float32, or float16/bfloat16 when the job asks for
smaller uploads. Varints are canonical unsigned LEB128:

    magic b"FAv3" | value dtype (1 byte: 0 float32, 1 float16, 2 bfloat16) | mask digest (32 B)
    per tensor, m its mask positions:
        varint k, its nonzero values (0 <= k <= m)
        if 0 < k < m: varint length | `encode_positions`, over the mask's [0, m), of the
            places of the nonzero values if k <= m - k, else of the zeros
    if K = sum(k) > 0:
        varint length | zstd frame of the K values' most significant bytes
        their other bytes, plane by plane, least significant first ((itemsize - 1) * K bytes)

A value is zero only if all its bits are (+0.0); -0.0 travels as a value. The most significant
byte holds the sign and (most of) the exponent, which trained values spread over few binades:
zstd codes that plane in about 4 bits a value. The mantissa bytes are incompressible: raw.

Payloads are untrusted: `decode_adapter` bounds the size by the layout first and every count by
the mask before any work proportional to it; the zstd frame must declare exactly K bytes; a
truncated payload, trailing bytes, +0.0 among the values (zeros travel as positions) and
non-finite values are refused with an AdapterCodecError (a ValueError) that names the tensor.
Encoding is deterministic.

Reading only, `decode_adapter` also takes the retired "fused-adapter-v2" (`adapter_codec_v2`):
artifacts stored before the upgrade stay readable. The first bytes tell the two apart: v3's
magic, or a zstd frame's (28 b5 2f fd), which every v2 payload starts with. Anything else is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import zstandard

from fused.common.codecs import adapter_codec_v2 as v2
from fused.common.codecs.positions import PositionCodecError, decode_positions, encode_positions
from fused.common.codecs.varint import varint
from fused.common.ml.adapters import AdapterLayout, check_values

__all__ = [
    "FORMAT",
    "MAGIC",
    "VALUE_DTYPES",
    "AdapterCodecError",
    "Section",
    "assemble",
    "decode_adapter",
    "default_max_bytes",
    "encode_adapter",
]

FORMAT = "fused-adapter-v3"
MAGIC = b"FAv3"
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = tuple(VALUE_DTYPES)  # the dtype byte is an index into this
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_DIGEST_BYTES = 32
_MAX_VARINT_BYTES = 10
_ZSTD_MAGIC_HEX = v2.ZSTD_MAGIC.hex(" ")  # how refusals name v2's first bytes


class AdapterCodecError(ValueError):
    """An adapter payload is malformed, oversized or does not fit the job's layout."""


@dataclass(frozen=True)
class Section:
    """One tensor's header: its nonzero values' count, and where they are among the mask's
    positions (an `encode_positions` payload; empty when none or all of them are nonzero)."""

    count: int
    positions: bytes = b""


def default_max_bytes(layout: AdapterLayout) -> int:
    """Limit on a payload's size: above what an honest float32 one can take for ``layout``.
    Positions are sent only when some values are zero, and cost less than the 4 bytes each
    zero saves (their few bytes of framing aside)."""
    values = layout.num_values
    return 1024 + 64 * len(layout.names) + 4 * values + values // 64


# --------------------------------------------------------------------------- encoding


def _planes(values: torch.Tensor) -> npt.NDArray[np.uint8]:
    """(itemsize, K) uint8: row j holds byte j (little-endian) of every value."""
    size = values.element_size()
    bits = values.contiguous().view(_BITS[values.dtype]).numpy().astype(f"<i{size}")
    return bits.view(np.uint8).reshape(-1, size).T


def assemble(
    dtype: str, digest: bytes, sections: Sequence[Section], values: torch.Tensor, level: int = 3
) -> bytes:
    """Lay out a payload from its parts, unchecked: the last step of `encode_adapter`, and a
    way for tests to build hostile payloads. ``values`` are the nonzero values, in ``dtype``."""
    out = bytearray(MAGIC)
    out.append(_DTYPE_NAMES.index(dtype))
    out += digest
    for section in sections:
        out += varint(section.count)
        if section.positions:
            out += varint(len(section.positions)) + section.positions
    planes = _planes(values)
    if planes.shape[1]:
        compressor = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False, write_dict_id=False
        )
        frame = compressor.compress(planes[-1].tobytes())
        out += varint(len(frame)) + frame + planes[:-1].tobytes()
    return bytes(out)


def _section(vector: torch.Tensor) -> tuple[Section, torch.Tensor]:
    """A tensor's section and its nonzero values (zero: all bits zero). The positions listed
    are those of the rarer kind, nonzero or zero: as small, and faster to code."""
    nonzero = vector.view(_BITS[vector.dtype]) != 0
    count, m = int(nonzero.sum()), vector.numel()
    if count == m:
        return Section(count), vector
    if count == 0:
        return Section(count), vector[:0]
    listed = nonzero if count <= m - count else ~nonzero
    return Section(count, encode_positions(listed.nonzero().flatten(), m)), vector[nonzero]


def encode_adapter(
    layout: AdapterLayout,
    values: Mapping[str, torch.Tensor],
    dtype: str = "float32",
    level: int = 3,
) -> bytes:
    """Encode ``values`` (one vector per layout tensor, aligned with ``layout.indices``)."""
    if dtype not in VALUE_DTYPES:
        raise AdapterCodecError(f"value dtype must be one of {sorted(VALUE_DTYPES)}, got {dtype!r}")
    try:
        check_values(layout, values)
    except ValueError as exc:
        raise AdapterCodecError(str(exc)) from exc
    sections: list[Section] = []
    kept: list[torch.Tensor] = []
    for name in layout.names:
        vector = values[name].detach().to(device="cpu", dtype=VALUE_DTYPES[dtype])
        if not bool(torch.isfinite(vector).all()):
            raise AdapterCodecError(f"adapter values for {name!r} are not all finite in {dtype}")
        section, nonzero = _section(vector)
        sections.append(section)
        kept.append(nonzero)
    joined = torch.cat(kept) if kept else torch.empty(0, dtype=VALUE_DTYPES[dtype])
    return assemble(dtype, bytes.fromhex(layout.digest), sections, joined, level)


# --------------------------------------------------------------------------- decoding


class _Reader:
    """Strict, bounded reads from the front of a payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if n > left:
            raise AdapterCodecError(
                f"adapter payload is truncated in {what}: {n} bytes needed, {left} left"
            )
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise AdapterCodecError(f"adapter payload: {what} is not a canonical varint")
                return value
        raise AdapterCodecError(f"adapter payload: {what} is longer than {_MAX_VARINT_BYTES} bytes")

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise AdapterCodecError(
                f"adapter payload has {len(self.data) - self.pos} trailing bytes"
            )


def _read_header(reader: _Reader, layout: AdapterLayout, dtype: str | None) -> torch.dtype:
    magic = reader.take(len(MAGIC), "its magic")
    if magic != MAGIC:
        raise AdapterCodecError(
            f"adapter payload starts with {magic!r}, not {MAGIC!r}: not a {FORMAT} payload, "
            f"nor a stored {v2.FORMAT} one (a zstd frame: {_ZSTD_MAGIC_HEX})"
        )
    code = reader.take(1, "its value dtype")[0]
    if code >= len(_DTYPE_NAMES):
        raise AdapterCodecError(f"adapter payload has unknown value dtype code {code}")
    name = _DTYPE_NAMES[code]
    if dtype is not None and name != dtype:
        raise AdapterCodecError(f"adapter values are {name}, not the job's value dtype ({dtype})")
    digest = reader.take(_DIGEST_BYTES, "its mask digest").hex()
    if digest != layout.digest:
        raise AdapterCodecError(
            f"adapter was built for a different mask: mask_digest {digest!r}, "
            f"this layout's is {layout.digest!r}"
        )
    return VALUE_DTYPES[name]


def _read_places(reader: _Reader, name: str, m: int) -> tuple[int, torch.Tensor | None]:
    """How many of the mask's m positions hold ``name``'s nonzero values, and which (a bool
    mask; None: all of them)."""
    count = reader.varint(f"{name!r}'s count")
    if count > m:
        raise AdapterCodecError(
            f"tensor {name!r}: {count} nonzero values, more than its {m} mask positions"
        )
    return count, None if count == m else _read_mask(reader, name, m, count)


def _read_mask(reader: _Reader, name: str, m: int, count: int) -> torch.Tensor:
    if count == 0:
        return torch.zeros(m, dtype=torch.bool)
    listed = min(count, m - count)
    size = reader.varint(f"{name!r}'s positions length")
    try:
        places = decode_positions(reader.take(size, f"{name!r}'s positions"), m, listed)
    except PositionCodecError as exc:
        raise AdapterCodecError(f"tensor {name!r}: {exc}") from exc
    if places.numel() != listed:
        raise AdapterCodecError(
            f"tensor {name!r}: {places.numel()} positions, its count {count} of {m} says {listed}"
        )
    mask = torch.zeros(m, dtype=torch.bool)
    mask[places] = True
    return mask if listed == count else ~mask


def _decompress(frame: bytes, expected: int) -> bytes:
    """The zstd frame of the high bytes: it must declare exactly ``expected`` bytes."""
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise AdapterCodecError(f"adapter values' high bytes are not a zstd frame: {exc}") from exc
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise AdapterCodecError("adapter values' zstd frame does not declare its content size")
    if declared != expected:
        raise AdapterCodecError(
            f"adapter values' zstd frame declares {declared} bytes, the counts say {expected}"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise AdapterCodecError(
            f"adapter values' high bytes could not be decompressed (corrupt, truncated or more "
            f"than one frame): {exc}"
        ) from exc
    if len(raw) != expected:
        raise AdapterCodecError(f"adapter values' frame holds {len(raw)} bytes, not {expected}")
    return raw


def _read_values(reader: _Reader, dtype: torch.dtype, count: int) -> torch.Tensor:
    """The ``count`` nonzero values, rebuilt from their byte planes."""
    size = dtype.itemsize
    planes = np.empty((size, count), dtype=np.uint8)
    if count:
        frame = reader.take(reader.varint("the values' frame length"), "the values' frame")
        planes[-1] = np.frombuffer(_decompress(frame, count), dtype=np.uint8)
        low = reader.take((size - 1) * count, "the values' low bytes")
        planes[:-1] = np.frombuffer(low, dtype=np.uint8).reshape(size - 1, count)
    bits = np.ascontiguousarray(planes.T).view(f"<i{size}").reshape(count)
    return torch.from_numpy(bits.astype(f"=i{size}")).view(dtype)


def _check_values(name: str, vector: torch.Tensor) -> None:
    zero = (vector.view(_BITS[vector.dtype]) == 0).nonzero()
    if zero.numel():
        raise AdapterCodecError(
            f"tensor {name!r}: value {int(zero[0])} of its nonzero values is +0.0 "
            "(zeros travel as positions)"
        )
    bad = (~torch.isfinite(vector)).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise AdapterCodecError(
            f"tensor {name!r}: value {float(vector[k])} at {k} of its nonzero values is not finite"
        )


def _decode_v2(
    data: bytes, layout: AdapterLayout, dtype: str | None, max_bytes: int | None
) -> dict[str, torch.Tensor]:
    """A stored fused-adapter-v2 payload, its errors named as this module's."""
    try:
        return v2.decode_adapter_v2(data, layout, dtype, max_bytes)
    except v2.AdapterV2Error as exc:
        raise AdapterCodecError(f"adapter payload ({v2.FORMAT}): {exc}") from exc


def decode_adapter(
    data: bytes,
    layout: AdapterLayout,
    dtype: str | None = None,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Validate a payload against ``layout`` (and the job's value ``dtype``, if given);
    return float32 values aligned with ``layout.indices``: from a v3 payload, or a stored v2
    one (``max_bytes`` defaults to its own format's limit). Raises AdapterCodecError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AdapterCodecError(f"adapter payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if v2.is_v2(data):
        return _decode_v2(data, layout, dtype, max_bytes)
    limit = default_max_bytes(layout) if max_bytes is None else max_bytes
    if len(data) > limit:
        raise AdapterCodecError(
            f"adapter payload is {len(data)} bytes, more than the limit of {limit}"
        )
    reader = _Reader(data)
    value_dtype = _read_header(reader, layout, dtype)
    sizes = {n: int(layout.indices[n].numel()) for n in layout.names}
    places = {n: _read_places(reader, n, sizes[n]) for n in layout.names}
    values = _read_values(reader, value_dtype, sum(count for count, _ in places.values()))
    reader.finish()
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, (count, where) in places.items():
        part, start = values[start : start + count], start + count
        _check_values(name, part)
        if where is None:
            out[name] = part.to(torch.float32)
        else:
            out[name] = torch.zeros(sizes[name], dtype=torch.float32)
            out[name][where] = part.to(torch.float32)
    return out
