"""Portable adapter file ("fused-adapter-file-v1"): an unlearning as a standalone patch.

An inference server that keeps a base model loaded applies the file with torch and
safetensors only (docs/ADAPTER_FILE.md). It is a plain safetensors file holding, for every
tensor the unlearning changed, the flat positions whose merged value differs bitwise from the
base and the merged values there:

* ``<name>::gaps``: the first position, then the gaps between successive positions, in the
  narrowest of uint8, int16, int32, int64 that holds the largest entry
  (``positions = gaps.to(torch.int64).cumsum(0)``);
* ``<name>::values``: the merged values at those positions, in the tensor's dtype.

Values replace rather than add: assignment reproduces the coordinator's merged tensor bit for
bit and writing the saved base values back restores the base exactly, which ``base + delta``
cannot promise in floating point (``-0.0 + 0.0`` is ``+0.0``).

Metadata: ``format``, ``base_sha256``, ``model_sha256``, ``shapes`` (canonical JSON of the
changed tensors' full shapes) and the caller's own string fields. Files are untrusted:
`decode_adapter_file` reuses `decode_tensors`' framing checks, then checks every key, dtype,
gap and count. Every failure is an `AdapterFileError` naming the tensor and the fault.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from fused.common.codecs.positions import MAX_N
from fused.common.codecs.tensor_codec import (
    DEFAULT_MAX_BYTES,
    MAX_DIMS,
    CodecError,
    decode_tensors,
    encode_tensors,
)

__all__ = [
    "FORMAT",
    "GAP_DTYPES",
    "RESERVED_KEYS",
    "VALUE_DTYPES",
    "AdapterFile",
    "AdapterFileError",
    "Patch",
    "build_adapter_file",
    "decode_adapter_file",
    "gap_dtype_for",
]

FORMAT = "fused-adapter-file-v1"
GAPS, VALUES = "::gaps", "::values"
RESERVED_KEYS = frozenset({"format", "base_sha256", "model_sha256", "shapes"})
VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Narrowest first; each with the largest entry it holds.
GAP_DTYPES: tuple[tuple[torch.dtype, int], ...] = (
    (torch.uint8, 2**8 - 1),
    (torch.int16, 2**15 - 1),
    (torch.int32, 2**31 - 1),
    (torch.int64, 2**63 - 1),
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class AdapterFileError(ValueError):
    """Bytes or tensors that do not form a valid adapter file, or do not fit a model."""


@dataclass(frozen=True)
class Patch:
    """One tensor's change: full ``shape``, sorted int64 flat ``positions``, new ``values``."""

    shape: tuple[int, ...]
    positions: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class AdapterFile:
    base_sha256: str
    model_sha256: str
    extra: Mapping[str, str]
    patches: Mapping[str, Patch]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gap_dtype_for(largest: int) -> torch.dtype:
    """The narrowest gap dtype holding ``largest``."""
    return next(dtype for dtype, top in GAP_DTYPES if largest <= top)


def _canonical_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return json.dumps(
        {n: list(s) for n, s in shapes.items()}, sort_keys=True, separators=(",", ":")
    )


def _check_sha(key: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise AdapterFileError(
            f"adapter file: {key} must be 64 lowercase hex digits, got {value!r}"
        )
    return value


# --------------------------------------------------------------------------- build


def _changed(name: str, base: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """Sorted flat positions where ``merged`` differs from ``base`` bit for bit."""
    if tuple(base.shape) != tuple(merged.shape) or base.dtype != merged.dtype:
        raise AdapterFileError(
            f"tensor {name!r}: merged is {_name(merged.dtype)}{list(merged.shape)}, "
            f"base is {_name(base.dtype)}{list(base.shape)}"
        )
    a = base.detach().cpu().contiguous().reshape(-1)
    b = merged.detach().cpu().contiguous().reshape(-1)
    size = a.element_size()
    if size in _BITS:  # integer views compare bit patterns: -0.0 != 0.0, NaN == same NaN
        differs = a.view(_BITS[size]) != b.view(_BITS[size])
    else:
        differs = (a.view(torch.uint8).view(-1, size) != b.view(torch.uint8).view(-1, size)).any(1)
    return differs.nonzero().reshape(-1)


def build_adapter_file(
    base: Mapping[str, torch.Tensor],
    merged: Mapping[str, torch.Tensor],
    base_sha256: str,
    model_sha256: str,
    extra: Mapping[str, str],
) -> bytes:
    """The adapter file turning ``base`` into ``merged`` (same names, shapes and dtypes)."""
    _check_sha("base_sha256", base_sha256)
    _check_sha("model_sha256", model_sha256)
    clash = sorted(set(extra) & RESERVED_KEYS)
    if clash:
        raise AdapterFileError(f"adapter file: extra metadata may not use reserved keys {clash}")
    missing, unexpected = sorted(set(base) - set(merged)), sorted(set(merged) - set(base))
    if missing or unexpected:
        raise AdapterFileError(
            f"adapter file: merged tensors differ from the base's: missing {missing}, "
            f"unexpected {unexpected}"
        )
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in sorted(base):
        positions = _changed(name, base[name], merged[name])
        if not positions.numel():
            continue
        if merged[name].dtype not in VALUE_DTYPES:
            raise AdapterFileError(
                f"tensor {name!r}: changed, but its dtype {_name(merged[name].dtype)} is not "
                f"one of {', '.join(map(_name, VALUE_DTYPES))}"
            )
        values = merged[name].detach().cpu().contiguous().reshape(-1)[positions]
        if not bool(torch.isfinite(values).all()):
            raise AdapterFileError(f"tensor {name!r}: merged values are not all finite")
        gaps = torch.cat([positions[:1], positions.diff()])
        tensors[name + GAPS] = gaps.to(gap_dtype_for(int(gaps.max())))
        tensors[name + VALUES] = values
        shapes[name] = tuple(merged[name].shape)
    metadata = {
        **extra,
        "format": FORMAT,
        "base_sha256": base_sha256,
        "model_sha256": model_sha256,
        "shapes": _canonical_shapes(shapes),
    }
    try:
        return encode_tensors(tensors, metadata)
    except CodecError as exc:
        raise AdapterFileError(f"adapter file: {exc}") from exc


# --------------------------------------------------------------------------- decode


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise AdapterFileError(f"adapter file: shapes names tensor {key!r} twice")
        out[key] = value
    return out


def _parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicates)
    except AdapterFileError:
        raise
    except (ValueError, RecursionError) as exc:
        raise AdapterFileError(f"adapter file: shapes is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterFileError(
            f"adapter file: shapes must be a JSON object of name to dims, got {type(raw).__name__}"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in raw.items():
        if not isinstance(dims, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
        ):
            raise AdapterFileError(
                f"tensor {name!r}: shape must be a list of non-negative integers, got {dims!r}"
            )
        if len(dims) > MAX_DIMS or math.prod(dims) > MAX_N:
            raise AdapterFileError(
                f"tensor {name!r}: shape {dims} exceeds {MAX_DIMS} dims or {MAX_N} elements"
            )
        shapes[name] = tuple(dims)
    if _canonical_shapes(shapes) != text:
        raise AdapterFileError(
            "adapter file: shapes is not canonical JSON (sorted keys, no spaces)"
        )
    return shapes


def _pair_up(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Exactly ``<name>::gaps`` and ``<name>::values`` for each name in shapes, nothing else."""
    for key in tensors:
        name, sep, role = key.rpartition("::")
        if not sep or f"::{role}" not in (GAPS, VALUES) or not name:
            raise AdapterFileError(f"adapter file: key {key!r} is not <name>::gaps or ::values")
        if name not in shapes:
            raise AdapterFileError(f"tensor {name!r}: stored but not listed in shapes")
    for name in shapes:
        for suffix in (GAPS, VALUES):
            if name + suffix not in tensors:
                raise AdapterFileError(f"tensor {name!r}: listed in shapes but lacks {suffix!r}")


def _positions(name: str, gaps: torch.Tensor, numel: int) -> torch.Tensor:
    """Undo the gap coding, refusing anything but canonical, in-range, increasing positions."""
    allowed = [dtype for dtype, _ in GAP_DTYPES]
    if gaps.dtype not in allowed:
        raise AdapterFileError(
            f"tensor {name!r}: gaps dtype {_name(gaps.dtype)} is not one of "
            f"{', '.join(map(_name, allowed))}"
        )
    if gaps.dim() != 1 or not gaps.numel():
        raise AdapterFileError(
            f"tensor {name!r}: gaps must be a non-empty vector (unchanged tensors are not "
            f"stored), got shape {list(gaps.shape)}"
        )
    g = gaps.to(torch.int64)
    if int(g[0]) < 0:
        raise AdapterFileError(f"tensor {name!r}: first position {int(g[0])} is negative")
    low = (g[1:] < 1).nonzero()
    if low.numel():
        k = int(low[0]) + 1
        raise AdapterFileError(
            f"tensor {name!r}: gap {int(g[k])} at index {k}; positions must strictly increase"
        )
    largest = int(g.max())
    if gaps.dtype != gap_dtype_for(largest):
        raise AdapterFileError(
            f"tensor {name!r}: gaps stored as {_name(gaps.dtype)}, but the largest ({largest}) "
            f"fits {_name(gap_dtype_for(largest))}"
        )
    # A float64 sum first: the int64 cumsum of hostile gaps could overflow.
    if g.numel() > numel or float(g.sum(dtype=torch.float64)) >= 2.0 * numel:
        raise AdapterFileError(f"tensor {name!r}: positions run past its {numel} elements")
    positions = g.cumsum(0)
    if int(positions[-1]) >= numel:
        raise AdapterFileError(
            f"tensor {name!r}: position {int(positions[-1])} is outside its {numel} elements"
        )
    return positions


def decode_adapter_file(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> AdapterFile:
    """Validate an adapter file strictly; raises AdapterFileError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AdapterFileError(f"adapter file must be bytes, got {type(data).__name__}")
    allowed = frozenset(VALUE_DTYPES) | frozenset(dtype for dtype, _ in GAP_DTYPES)
    try:
        tensors, metadata = decode_tensors(bytes(data), max_bytes=max_bytes, allowed_dtypes=allowed)
    except CodecError as exc:
        raise AdapterFileError(f"adapter file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise AdapterFileError(
            f"adapter file: format is {metadata.get('format')!r}, expected {FORMAT!r}"
        )
    missing = sorted(RESERVED_KEYS - set(metadata))
    if missing:
        raise AdapterFileError(f"adapter file: metadata lacks {missing}")
    base_sha = _check_sha("base_sha256", metadata["base_sha256"])
    model_sha = _check_sha("model_sha256", metadata["model_sha256"])
    shapes = _parse_shapes(metadata["shapes"])
    _pair_up(tensors, shapes)
    patches: dict[str, Patch] = {}
    for name, shape in sorted(shapes.items()):
        positions = _positions(name, tensors[name + GAPS], math.prod(shape))
        values = tensors[name + VALUES]
        if values.dtype not in VALUE_DTYPES:
            raise AdapterFileError(
                f"tensor {name!r}: values dtype {_name(values.dtype)} is not one of "
                f"{', '.join(map(_name, VALUE_DTYPES))}"
            )
        if tuple(values.shape) != tuple(positions.shape):
            raise AdapterFileError(
                f"tensor {name!r}: {positions.numel()} positions but values of shape "
                f"{list(values.shape)}"
            )
        patches[name] = Patch(shape, positions, values)
    extra = {k: v for k, v in sorted(metadata.items()) if k not in RESERVED_KEYS}
    return AdapterFile(base_sha, model_sha, MappingProxyType(extra), MappingProxyType(patches))
