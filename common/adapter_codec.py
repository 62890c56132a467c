"""Wire format of FUSED adapter values ("fused-adapter-v1").

A payload is ONE zstd frame that declares its content size, wrapping a safetensors file (built
by `common.tensor_codec`) holding, for every tensor of the adapter layout,

* ``<name>::indices``: int64 flat positions of the NONZERO values, strictly increasing, each a
  member of the layout's mask — omitted when every masked position is nonzero (the usual case
  after training), since both sides derive the mask from its seed and check its digest;
* ``<name>::present``: instead of indices, when cheaper (nearly always): a little-endian
  bitmap over the mask's slots marking the nonzero ones;
* ``<name>::values``: the float32 values at those positions (in mask order);

and the metadata ``{"format": "fused-adapter-v1", "mask_digest": layout.digest}``. Zeros are
omitted (a fresh or partly trained adapter costs only what it carries) and must not be sent, so
equal values always encode to identical bytes.

Payloads are untrusted: `decode_adapter` bounds the compressed size and the frame's declared
content size (from the layout) before decompressing anything, then validates every tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import torch
import zstandard

from common.adapters import AdapterLayout, check_values
from common.tensor_codec import CodecError, decode_tensors, encode_tensors

__all__ = [
    "FORMAT",
    "AdapterCodecError",
    "decode_adapter",
    "default_max_bytes",
    "encode_adapter",
    "max_content_bytes",
]

FORMAT = "fused-adapter-v1"
INDICES_SUFFIX = "::indices"
VALUES_SUFFIX = "::values"
PRESENT_SUFFIX = "::present"
_BYTES_PER_VALUE = 12  # int64 index + float32 value
_HEADER_SLACK = 256  # room beyond our own encoder's exact header length
_ALLOWED_DTYPES = frozenset({torch.int64, torch.float32, torch.uint8})


class AdapterCodecError(ValueError):
    """Adapter values or bytes that do not form a valid payload for the given layout."""


# --------------------------------------------------------------------------- bounds


def _header_bound(layout: AdapterLayout) -> int:
    """Length of the safetensors header of a payload carrying every masked position, with
    the widest possible numbers (offsets are at most the data size)."""
    widest = _BYTES_PER_VALUE * layout.num_values
    header: dict[str, object] = {"__metadata__": {"format": FORMAT, "mask_digest": layout.digest}}
    for name in layout.names:
        entry = {"dtype": "I64", "shape": [widest], "data_offsets": [widest, widest]}
        header[name + INDICES_SUFFIX] = entry
        header[name + VALUES_SUFFIX] = entry
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return 8 + len(text) + 7  # length field, header, alignment padding


def max_content_bytes(layout: AdapterLayout) -> int:
    """The largest decompressed size an honest payload for ``layout`` can have."""
    return _header_bound(layout) + _HEADER_SLACK + _BYTES_PER_VALUE * layout.num_values


def default_max_bytes(layout: AdapterLayout) -> int:
    """Default limit on the compressed size: 64 KiB + 16 bytes per masked position."""
    return 64 * 1024 + 16 * layout.num_values


# --------------------------------------------------------------------------- encode


def encode_adapter(
    layout: AdapterLayout, values: Mapping[str, torch.Tensor], level: int = 3
) -> bytes:
    """Encode ``values`` (one vector per layout tensor, aligned with ``layout.indices``)."""
    try:
        check_values(layout, values)
    except ValueError as exc:
        raise AdapterCodecError(str(exc)) from exc
    tensors: dict[str, torch.Tensor] = {}
    for name in layout.names:
        vector = values[name].detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(vector).all()):
            raise AdapterCodecError(f"adapter values for {name!r} are not all finite")
        keep = vector != 0
        tensors[name + VALUES_SUFFIX] = vector[keep]
        if bool(keep.all()):  # positions are the mask's, which both sides derive from its seed
            continue
        if int(keep.sum()) * 8 > (keep.numel() + 7) // 8:  # a bitmap over the mask is smaller
            bits = np.packbits(keep.numpy(), bitorder="little")
            tensors[name + PRESENT_SUFFIX] = torch.from_numpy(bits)
        else:
            tensors[name + INDICES_SUFFIX] = layout.indices[name][keep]
    raw = encode_tensors(tensors, {"format": FORMAT, "mask_digest": layout.digest})
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor.compress(raw)


# --------------------------------------------------------------------------- decode


def _decompress(data: bytes, limit: int) -> bytes:
    """One bounded zstd frame: its declared content size is checked before decompression."""
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise AdapterCodecError(f"adapter payload is not a zstd frame: {exc}") from exc
    declared = params.content_size
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR, 0):
        raise AdapterCodecError("adapter payload's zstd frame does not declare its content size")
    if declared > limit:
        raise AdapterCodecError(
            f"adapter payload declares {declared} decompressed bytes, more than the {limit} "
            "an adapter for this layout can need (decompression bomb?)"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=declared, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise AdapterCodecError(
            f"adapter payload could not be decompressed (corrupt, truncated or more than "
            f"one frame): {exc}"
        ) from exc
    if len(raw) != declared:
        raise AdapterCodecError(
            f"adapter payload decompressed to {len(raw)} bytes, its frame declares {declared}"
        )
    return raw


def _check_metadata(metadata: Mapping[str, str], layout: AdapterLayout) -> None:
    unexpected = sorted(set(metadata) - {"format", "mask_digest"})
    if unexpected:
        raise AdapterCodecError(f"adapter payload has unexpected metadata keys {unexpected}")
    if metadata.get("format") != FORMAT:
        raise AdapterCodecError(
            f"adapter payload format is {metadata.get('format')!r}, expected {FORMAT!r}"
        )
    digest = metadata.get("mask_digest")
    if digest != layout.digest:
        raise AdapterCodecError(
            f"adapter was built for a different mask: mask_digest {digest!r}, "
            f"this layout's is {layout.digest!r}"
        )


def _check_names(tensors: Mapping[str, torch.Tensor], layout: AdapterLayout) -> None:
    required = {n + VALUES_SUFFIX for n in layout.names}
    allowed = required | {n + s for n in layout.names for s in (INDICES_SUFFIX, PRESENT_SUFFIX)}
    missing = sorted(required - set(tensors))
    unexpected = sorted(set(tensors) - allowed)
    both = sorted(
        n for n in layout.names if {n + INDICES_SUFFIX, n + PRESENT_SUFFIX} <= set(tensors)
    )
    if both:
        unexpected += [f"{n} (both indices and a presence bitmap)" for n in both]
    if missing or unexpected:
        raise AdapterCodecError(
            f"adapter payload tensors do not match the layout: missing {missing}, "
            f"unexpected {unexpected}"
        )


def _check_pair(name: str, indices: torch.Tensor, values: torch.Tensor) -> None:
    for key, tensor, dtype in (
        (name + INDICES_SUFFIX, indices, torch.int64),
        (name + VALUES_SUFFIX, values, torch.float32),
    ):
        if tensor.dtype != dtype:
            raise AdapterCodecError(f"tensor {key!r}: expected dtype {dtype}, got {tensor.dtype}")
        if tensor.dim() != 1:
            raise AdapterCodecError(f"tensor {key!r}: expected 1-D, got shape {list(tensor.shape)}")
    if indices.numel() != values.numel():
        raise AdapterCodecError(
            f"tensor {name!r}: {indices.numel()} indices but {values.numel()} values "
            "(lengths must be equal)"
        )
    zero = (values == 0).nonzero()
    if zero.numel():
        k = int(zero[0])
        raise AdapterCodecError(
            f"tensor {name + VALUES_SUFFIX!r}: explicit zero at position {k} "
            "(zeros must be omitted)"
        )


def _check_indices(name: str, indices: torch.Tensor, layout: AdapterLayout) -> torch.Tensor:
    """Validate order, range and mask membership; return the positions within the mask."""
    key = name + INDICES_SUFFIX
    steps = indices[1:] - indices[:-1]
    bad = (steps <= 0).nonzero()
    if bad.numel():
        k = int(bad[0]) + 1
        prev, cur = int(indices[k - 1]), int(indices[k])
        what = f"duplicate index {cur}" if prev == cur else f"index {cur} follows {prev}"
        raise AdapterCodecError(
            f"tensor {key!r}: indices must be strictly increasing; {what} at position {k}"
        )
    numel = math.prod(layout.shapes[name])
    outside = ((indices < 0) | (indices >= numel)).nonzero()
    if outside.numel():
        k = int(outside[0])
        raise AdapterCodecError(
            f"tensor {key!r}: index {int(indices[k])} at position {k} is out of range [0, {numel})"
        )
    mask = layout.indices[name]
    slots = torch.searchsorted(mask, indices)
    found = mask[slots.clamp(max=mask.numel() - 1)] == indices
    absent = (~found).nonzero()
    if absent.numel():
        k = int(absent[0])
        raise AdapterCodecError(
            f"tensor {key!r}: index {int(indices[k])} at position {k} is not in the adapter mask"
        )
    return slots


def _implied_indices(
    name: str, present: torch.Tensor | None, layout: AdapterLayout
) -> torch.Tensor:
    """Positions implied by the mask, or by a little-endian bitmap over the mask's slots."""
    mask = layout.indices[name]
    if present is None:
        return mask
    key = name + PRESENT_SUFFIX
    n = mask.numel()
    if present.dtype != torch.uint8 or present.dim() != 1 or present.numel() != (n + 7) // 8:
        raise AdapterCodecError(
            f"tensor {key!r}: expected {(n + 7) // 8} uint8 bitmap bytes for {n} mask slots, "
            f"got {present.dtype} of shape {list(present.shape)}"
        )
    bits = np.unpackbits(present.numpy(), bitorder="little")
    if bits[n:].any():
        raise AdapterCodecError(f"tensor {key!r}: bits set beyond the {n} mask slots")
    return mask[torch.from_numpy(bits[:n].astype(bool))]


def decode_adapter(
    data: bytes, layout: AdapterLayout, max_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Validate a payload against ``layout`` and return float32 values aligned with
    ``layout.indices`` (zeros at omitted positions). Raises AdapterCodecError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AdapterCodecError(f"adapter payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    limit = default_max_bytes(layout) if max_bytes is None else max_bytes
    if len(data) > limit:
        raise AdapterCodecError(
            f"adapter payload is {len(data)} bytes compressed, more than the limit of {limit}"
        )
    content_limit = max_content_bytes(layout)
    raw = _decompress(data, content_limit)
    try:
        tensors, metadata = decode_tensors(
            raw, max_bytes=content_limit, allowed_dtypes=_ALLOWED_DTYPES
        )
    except CodecError as exc:
        raise AdapterCodecError(f"adapter payload: {exc}") from exc
    _check_metadata(metadata, layout)
    _check_names(tensors, layout)
    out: dict[str, torch.Tensor] = {}
    for name in layout.names:
        values = tensors[name + VALUES_SUFFIX]
        indices = tensors.get(name + INDICES_SUFFIX)
        if indices is None:
            indices = _implied_indices(name, tensors.get(name + PRESENT_SUFFIX), layout)
            if values.dim() == 1 and values.numel() != indices.numel():
                raise AdapterCodecError(
                    f"tensor {name + VALUES_SUFFIX!r}: {values.numel()} values without "
                    f"indices, but the mask (or its presence bitmap) has {indices.numel()} "
                    "positions"
                )
        _check_pair(name, indices, values)
        slots = _check_indices(name, indices, layout)
        dense = torch.zeros(layout.indices[name].numel(), dtype=torch.float32)
        dense[slots] = values
        out[name] = dense
    return out
