"""Reading the retired adapter wire format "fused-adapter-v2" (written until fused-adapter-v3).

A coordinator keeps adapter values as artifacts for months (adapter versions are reverted,
reapplied, resumed), so payloads written before the upgrade must still decode; nothing writes
v2 any more. `adapter_codec.decode_adapter` sends here every payload that starts like a zstd
frame; this module only reads, with the checks v2 always had.

A v2 payload is ONE zstd frame that declares its content size, wrapping a safetensors file
(`tensor_codec`) with metadata ``{"format": "fused-adapter-v2", "mask_digest": ...}`` and, per
layout tensor, a 1-D tensor ``<name>`` of the values at every masked position, in mask order
(zeros included), as float32, float16 or bfloat16.

Payloads are untrusted: the compressed size and the frame's declared content size are bounded
by the layout before anything is decompressed, then every tensor is validated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
import zstandard

from fused.common.codecs.tensor_codec import CodecError, decode_tensors
from fused.common.ml.adapters import AdapterLayout

__all__ = [
    "FORMAT",
    "ZSTD_MAGIC",
    "AdapterV2Error",
    "decode_adapter_v2",
    "default_max_bytes",
    "is_v2",
    "max_content_bytes",
]

FORMAT = "fused-adapter-v2"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # every v2 payload's first bytes: the frame's magic number
# The dtypes v2 carried (adapter_codec's own table cannot be imported here: it imports this).
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HEADER_SLACK = 256  # room beyond the v2 encoder's exact header length


class AdapterV2Error(ValueError):
    """A v2 payload is malformed, oversized or does not fit the layout (`adapter_codec`
    re-raises it as its AdapterCodecError: this module cannot import that one, which imports
    this)."""


def is_v2(data: bytes) -> bool:
    return data[: len(ZSTD_MAGIC)] == ZSTD_MAGIC


def _header_bound(layout: AdapterLayout) -> int:
    """Length of the safetensors header with the widest possible numbers."""
    widest = 4 * layout.num_values
    header: dict[str, object] = {"__metadata__": {"format": FORMAT, "mask_digest": layout.digest}}
    for name in layout.names:
        header[name] = {"dtype": "BF16", "shape": [widest], "data_offsets": [widest, widest]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return 8 + len(text) + 7  # length field, header, alignment padding


def max_content_bytes(layout: AdapterLayout) -> int:
    """The largest decompressed size an honest v2 payload for ``layout`` can have."""
    return _header_bound(layout) + _HEADER_SLACK + 4 * layout.num_values


def default_max_bytes(layout: AdapterLayout) -> int:
    """Default limit on the compressed size (zstd may grow incompressible data a little)."""
    return 4096 + max_content_bytes(layout) + max_content_bytes(layout) // 64


def _decompress(data: bytes, limit: int) -> bytes:
    """One bounded zstd frame: its declared content size is checked before decompression."""
    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        raise AdapterV2Error(f"not a zstd frame: {exc}") from exc
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR, 0):
        raise AdapterV2Error("its zstd frame does not declare its content size")
    if declared > limit:
        raise AdapterV2Error(
            f"it declares {declared} decompressed bytes, more than the {limit} an adapter for "
            "this layout can need (decompression bomb?)"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=declared, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise AdapterV2Error(
            f"it could not be decompressed (corrupt, truncated or more than one frame): {exc}"
        ) from exc
    if len(raw) != declared:
        raise AdapterV2Error(f"it decompressed to {len(raw)} bytes, its frame declares {declared}")
    return raw


def _check_metadata(metadata: Mapping[str, str], layout: AdapterLayout) -> None:
    unexpected = sorted(set(metadata) - {"format", "mask_digest"})
    if unexpected:
        raise AdapterV2Error(f"unexpected metadata keys {unexpected}")
    if metadata.get("format") != FORMAT:
        raise AdapterV2Error(f"format is {metadata.get('format')!r}, expected {FORMAT!r}")
    digest = metadata.get("mask_digest")
    if digest != layout.digest:
        raise AdapterV2Error(
            f"adapter was built for a different mask: mask_digest {digest!r}, "
            f"this layout's is {layout.digest!r}"
        )


def _check_tensor(
    name: str, tensor: torch.Tensor, layout: AdapterLayout, dtype: str | None
) -> None:
    allowed = {VALUE_DTYPES[dtype]} if dtype else set(VALUE_DTYPES.values())
    if tensor.dtype not in allowed:
        raise AdapterV2Error(
            f"tensor {name!r}: dtype {tensor.dtype} is not the job's value dtype "
            f"({', '.join(sorted(str(d) for d in allowed))})"
        )
    expected = layout.indices[name].numel()
    if tensor.dim() != 1 or tensor.numel() != expected:
        raise AdapterV2Error(
            f"tensor {name!r}: expected {expected} values (one per masked position), "
            f"got shape {list(tensor.shape)}"
        )
    bad = (~torch.isfinite(tensor)).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise AdapterV2Error(f"tensor {name!r}: value {float(tensor[k])} at {k} is not finite")


def decode_adapter_v2(
    data: bytes, layout: AdapterLayout, dtype: str | None, max_bytes: int | None
) -> dict[str, torch.Tensor]:
    """Validate a v2 payload against ``layout`` (and the job's value ``dtype``, if given);
    return float32 values aligned with ``layout.indices``. Raises AdapterV2Error."""
    if dtype is not None and dtype not in VALUE_DTYPES:
        raise AdapterV2Error(f"value dtype must be one of {sorted(VALUE_DTYPES)}, got {dtype!r}")
    limit = default_max_bytes(layout) if max_bytes is None else max_bytes
    if len(data) > limit:
        raise AdapterV2Error(f"{len(data)} bytes compressed, more than the limit of {limit}")
    content_limit = max_content_bytes(layout)
    raw = _decompress(data, content_limit)
    try:
        tensors, metadata = decode_tensors(
            raw, max_bytes=content_limit, allowed_dtypes=frozenset(VALUE_DTYPES.values())
        )
    except CodecError as exc:
        raise AdapterV2Error(str(exc)) from exc
    _check_metadata(metadata, layout)
    missing = sorted(set(layout.names) - set(tensors))
    unexpected = sorted(set(tensors) - set(layout.names))
    if missing or unexpected:
        raise AdapterV2Error(
            f"tensors do not match the layout: missing {missing}, unexpected {unexpected}"
        )
    for name in layout.names:
        _check_tensor(name, tensors[name], layout, dtype)
    return {name: tensors[name].to(torch.float32) for name in layout.names}
