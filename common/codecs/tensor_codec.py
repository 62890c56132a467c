"""Strict safetensors (de)serialization of named tensors.

Bytes from the network are untrusted: `decode_tensors` parses and validates the safetensors
header itself (size bounds, duplicate keys, dtypes, shapes, offsets that tile the data buffer
exactly) before `safetensors.torch.load` ever sees them, then checks the optional schema and
that floating tensors are finite. Every failure is a `CodecError` whose message names the
offending tensor and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

__all__ = [
    "DEFAULT_ALLOWED_DTYPES",
    "DEFAULT_MAX_BYTES",
    "MAX_HEADER_BYTES",
    "CodecError",
    "TensorSchema",
    "TensorSpec",
    "decode_tensors",
    "encode_tensors",
    "schema_of",
    "state_dict_digest",
]

DEFAULT_MAX_BYTES = 512 * 2**20
MAX_HEADER_BYTES = 2**20
MAX_DIMS = 64  # torch's elementwise kernels refuse tensors with more dimensions
METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})

DEFAULT_ALLOWED_DTYPES: frozenset[torch.dtype] = frozenset(
    {
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.uint8,
        torch.bool,
    }
)

# safetensors dtype strings this codec recognises (a subset of the format's list).
_DTYPE_FROM_STR: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CodecError(ValueError):
    """Bytes or tensors that do not form a valid, acceptable payload."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{_dtype_name(self.dtype)}{list(self.shape)}"


TensorSchema = Mapping[str, TensorSpec]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def schema_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The name -> (shape, dtype) schema of a set of tensors."""
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in tensors.items()}


# --------------------------------------------------------------------------- encode


def encode_tensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize to safetensors bytes; equal input (names, dtypes, shapes, values, metadata)
    gives identical bytes regardless of dict order or the tensors' device and memory layout."""
    prepared: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise CodecError(f"tensor names must be non-empty strings, got {name!r}")
        if name == METADATA_KEY:
            raise CodecError(f"{METADATA_KEY!r} is reserved and cannot name a tensor")
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"tensor {name!r}: expected torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _DTYPE_FROM_STR.values():
            raise CodecError(f"tensor {name!r}: dtype {_dtype_name(tensor.dtype)} is not supported")
        # A private, dense, contiguous CPU copy: also breaks memory sharing between entries
        # (tied weights), which safetensors refuses to save.
        prepared[name] = tensor.detach().to("cpu").contiguous().clone()

    meta: dict[str, str] = {}
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise CodecError(
                    f"metadata must map str to str, got {key!r}: {type(value).__name__}"
                )
            meta[key] = value

    try:
        raw: bytes = safetensors.torch.save(dict(sorted(prepared.items())))
    except Exception as exc:  # safetensors raises assorted error types
        raise CodecError(f"safetensors could not serialize the tensors: {exc}") from exc
    if not meta:
        return raw
    # safetensors writes metadata from a hash map (its order varies between processes), so
    # the metadata is spliced into the header here with sorted keys to keep bytes stable.
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    new_header: dict[str, Any] = {METADATA_KEY: dict(sorted(meta.items()))}
    new_header.update((k, v) for k, v in header.items() if k != METADATA_KEY)
    return _assemble(new_header, data)


def _assemble(header: Mapping[str, Any], data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8-byte alignment
    return struct.pack("<Q", len(text)) + text + data


# --------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CodecError(f"header has duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(token: str) -> Any:
    raise CodecError(f"header contains the non-JSON constant {token}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(data: bytes, max_bytes: int) -> tuple[list[_Entry], dict[str, str], int]:
    """Validate framing and header; return entries, metadata and the data buffer's start."""
    if len(data) > max_bytes:
        raise CodecError(f"payload is {len(data)} bytes, more than the limit of {max_bytes}")
    if len(data) < 8:
        raise CodecError(f"payload is truncated: {len(data)} bytes, need at least 8")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CodecError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES}")
    if header_len > len(data) - 8:
        raise CodecError(
            f"header length {header_len} exceeds the {len(data) - 8} bytes after the length field"
        )
    if header_len == 0:
        raise CodecError("header is empty")
    try:
        text = data[8 : 8 + header_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"header is not valid UTF-8: {exc}") from exc
    try:
        header = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except CodecError:
        raise
    except (ValueError, RecursionError) as exc:  # also: too-deep nesting, overlong integers
        raise CodecError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError(f"header must be a JSON object, got {type(header).__name__}")

    buffer_len = len(data) - 8 - header_len
    metadata: dict[str, str] = {}
    entries: list[_Entry] = []
    for name, value in header.items():
        if name == METADATA_KEY:
            if not isinstance(value, dict):
                raise CodecError(f"{METADATA_KEY} must be an object, got {type(value).__name__}")
            for key, item in value.items():
                if not isinstance(item, str):
                    raise CodecError(
                        f"metadata value for {key!r} must be a string, got {type(item).__name__}"
                    )
                metadata[key] = item
            continue
        entries.append(_parse_entry(name, value, buffer_len))

    # The entries must tile [0, buffer_len) exactly: no gap, no overlap, nothing left over.
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin < position:
            raise CodecError(
                f"tensor {entry.name!r}: data_offsets [{entry.begin}, {entry.end}] overlap "
                f"the previous tensor, which ends at {position}"
            )
        if entry.begin > position:
            raise CodecError(
                f"tensor {entry.name!r}: data_offsets [{entry.begin}, {entry.end}] leave a gap "
                f"of {entry.begin - position} bytes after offset {position}"
            )
        position = entry.end
    if position != buffer_len:
        raise CodecError(
            f"tensors cover {position} bytes but the data buffer holds {buffer_len} bytes"
        )
    return entries, metadata, 8 + header_len


def _parse_entry(name: str, value: Any, buffer_len: int) -> _Entry:
    if not name:
        raise CodecError("header has a tensor with an empty name")
    if not isinstance(value, dict):
        raise CodecError(f"tensor {name!r}: entry must be an object, got {type(value).__name__}")
    keys = set(value)
    if keys != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - keys)
        extra = sorted(keys - _ENTRY_KEYS)
        raise CodecError(
            f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets "
            f"(missing {missing}, unexpected {extra})"
        )
    dtype_str = value["dtype"]
    if not isinstance(dtype_str, str) or dtype_str not in _DTYPE_FROM_STR:
        raise CodecError(
            f"tensor {name!r}: unknown dtype {dtype_str!r} "
            f"(known: {', '.join(sorted(_DTYPE_FROM_STR))})"
        )
    dtype = _DTYPE_FROM_STR[dtype_str]
    shape = value["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CodecError(
            f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) > MAX_DIMS:
        raise CodecError(f"tensor {name!r}: {len(shape)} dimensions, more than {MAX_DIMS}")
    offsets = value["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CodecError(f"tensor {name!r}: data_offsets must be two integers, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_len:
        raise CodecError(
            f"tensor {name!r}: data_offsets [{begin}, {end}] out of range for a data buffer "
            f"of {buffer_len} bytes"
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if end - begin != expected:
        raise CodecError(
            f"tensor {name!r}: shape {shape} of {dtype_str} needs {expected} bytes, "
            f"data_offsets [{begin}, {end}] give {end - begin}"
        )
    return _Entry(name, dtype, tuple(shape), begin, end)


def _check_schema(entries: list[_Entry], schema: TensorSchema) -> None:
    names = {e.name for e in entries}
    missing = sorted(set(schema) - names)
    unexpected = sorted(names - set(schema))
    if missing or unexpected:
        raise CodecError(
            f"tensor names do not match the schema: missing {missing}, unexpected {unexpected}"
        )
    for entry in entries:
        spec = schema[entry.name]
        if entry.shape != tuple(spec.shape):
            raise CodecError(
                f"tensor {entry.name!r}: expected shape {list(spec.shape)}, got {list(entry.shape)}"
            )
        if entry.dtype != spec.dtype:
            raise CodecError(
                f"tensor {entry.name!r}: expected dtype {_dtype_name(spec.dtype)}, "
                f"got {_dtype_name(entry.dtype)}"
            )


def decode_tensors(
    data: bytes,
    *,
    schema: TensorSchema | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_dtypes: frozenset[torch.dtype] = DEFAULT_ALLOWED_DTYPES,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validate and load safetensors bytes; return (tensors sorted by name, metadata)."""
    data = bytes(data)
    entries, metadata, _ = _parse_header(data, max_bytes)
    for entry in entries:
        if entry.dtype not in allowed_dtypes:
            allowed = ", ".join(sorted(_dtype_name(d) for d in allowed_dtypes))
            raise CodecError(
                f"tensor {entry.name!r}: dtype {_dtype_name(entry.dtype)} is not allowed "
                f"(allowed: {allowed})"
            )
    if schema is not None:
        _check_schema(entries, schema)

    try:
        loaded = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error type
        raise CodecError(f"safetensors rejected the payload: {exc}") from exc

    tensors: dict[str, torch.Tensor] = {}
    for entry in sorted(entries, key=lambda e: e.name):
        tensor = loaded.get(entry.name)
        if tensor is None or tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise CodecError(f"tensor {entry.name!r}: loaded tensor does not match its header")
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CodecError(
                f"tensor {entry.name!r}: {bad} of {tensor.numel()} values are not finite "
                "(NaN or Inf)"
            )
        tensors[entry.name] = tensor
    if len(loaded) != len(tensors):
        raise CodecError(f"safetensors loaded {len(loaded)} tensors, header lists {len(tensors)}")
    return tensors, metadata


# --------------------------------------------------------------------------- digest


def state_dict_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes: equal iff bit-identical."""
    h = hashlib.sha256(b"fused-state-dict-digest-v1\0")
    h.update(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        name_bytes = name.encode("utf-8")
        dtype_bytes = _dtype_name(tensor.dtype).encode("ascii")
        h.update(struct.pack("<Q", len(name_bytes)) + name_bytes)
        h.update(struct.pack("<Q", len(dtype_bytes)) + dtype_bytes)
        h.update(struct.pack("<Q", tensor.dim()))
        h.update(struct.pack(f"<{tensor.dim()}Q", *tensor.shape))
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        h.update(struct.pack("<Q", raw.nbytes))
        h.update(raw.data)
    return h.hexdigest()
