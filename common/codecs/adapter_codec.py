"""Wire format of FUSED adapter values ("fused-adapter-v2").

The mask of an adapter job is fixed and both sides derive it from its seed (checking its
digest), so positions never travel with the values: a payload carries, for every tensor of the
layout, ``<name>``: the values at every masked position, in mask order (zeros included;
they compress), as float32, or float16/bfloat16 when the job asks for smaller uploads. It is
ONE zstd frame that declares its content size, wrapping a safetensors file (built by
`common.codecs.tensor_codec`) with metadata ``{"format": "fused-adapter-v2", "mask_digest": ...}``.

Payloads are untrusted: `decode_adapter` bounds the compressed size and the frame's declared
content size (from the layout) before decompressing anything, then validates every tensor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
import zstandard

from fused.common.codecs.tensor_codec import CodecError, decode_tensors, encode_tensors
from fused.common.ml.adapters import AdapterLayout, check_values

__all__ = [
    "FORMAT",
    "VALUE_DTYPES",
    "AdapterCodecError",
    "decode_adapter",
    "default_max_bytes",
    "encode_adapter",
    "max_content_bytes",
]

FORMAT = "fused-adapter-v2"
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HEADER_SLACK = 256  # room beyond our own encoder's exact header length


class AdapterCodecError(ValueError):
    """An adapter payload is malformed, oversized or does not fit the job's layout."""


def _header_bound(layout: AdapterLayout) -> int:
    """Length of the safetensors header with the widest possible numbers."""
    widest = 4 * layout.num_values
    header: dict[str, object] = {"__metadata__": {"format": FORMAT, "mask_digest": layout.digest}}
    for name in layout.names:
        header[name] = {"dtype": "BF16", "shape": [widest], "data_offsets": [widest, widest]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return 8 + len(text) + 7  # length field, header, alignment padding


def max_content_bytes(layout: AdapterLayout) -> int:
    """The largest decompressed size an honest payload for ``layout`` can have."""
    return _header_bound(layout) + _HEADER_SLACK + 4 * layout.num_values


def default_max_bytes(layout: AdapterLayout) -> int:
    """Default limit on the compressed size (zstd may grow incompressible data a little)."""
    return 4096 + max_content_bytes(layout) + max_content_bytes(layout) // 64


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
    tensors: dict[str, torch.Tensor] = {}
    for name in layout.names:
        vector = values[name].detach().to(device="cpu", dtype=VALUE_DTYPES[dtype])
        if not bool(torch.isfinite(vector).all()):
            raise AdapterCodecError(f"adapter values for {name!r} are not all finite in {dtype}")
        tensors[name] = vector
    raw = encode_tensors(tensors, {"format": FORMAT, "mask_digest": layout.digest})
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


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


def _check_tensor(
    name: str, tensor: torch.Tensor, layout: AdapterLayout, dtype: str | None
) -> None:
    allowed = {VALUE_DTYPES[dtype]} if dtype else set(VALUE_DTYPES.values())
    if tensor.dtype not in allowed:
        raise AdapterCodecError(
            f"tensor {name!r}: dtype {tensor.dtype} is not the job's value dtype "
            f"({', '.join(sorted(str(d) for d in allowed))})"
        )
    expected = layout.indices[name].numel()
    if tensor.dim() != 1 or tensor.numel() != expected:
        raise AdapterCodecError(
            f"tensor {name!r}: expected {expected} values (one per masked position), "
            f"got shape {list(tensor.shape)}"
        )
    bad = (~torch.isfinite(tensor)).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise AdapterCodecError(f"tensor {name!r}: value {float(tensor[k])} at {k} is not finite")


def decode_adapter(
    data: bytes,
    layout: AdapterLayout,
    dtype: str | None = None,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Validate a payload against ``layout`` (and the job's value ``dtype``, if given);
    return float32 values aligned with ``layout.indices``. Raises AdapterCodecError."""
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
            raw, max_bytes=content_limit, allowed_dtypes=frozenset(VALUE_DTYPES.values())
        )
    except CodecError as exc:
        raise AdapterCodecError(f"adapter payload: {exc}") from exc
    _check_metadata(metadata, layout)
    missing = sorted(set(layout.names) - set(tensors))
    unexpected = sorted(set(tensors) - set(layout.names))
    if missing or unexpected:
        raise AdapterCodecError(
            f"adapter payload tensors do not match the layout: missing {missing}, "
            f"unexpected {unexpected}"
        )
    for name in layout.names:
        _check_tensor(name, tensors[name], layout, dtype)
    return {name: tensors[name].to(torch.float32) for name in layout.names}
