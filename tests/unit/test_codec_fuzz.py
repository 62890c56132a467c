"""Property-based fuzzing of the wire codecs that hostile participants can reach.

Every decoder must either return a result that satisfies its contract or raise its documented
ValueError subclass; any other exception (IndexError, struct.error, RecursionError, a leaked
zstd or torch error, ...) fails the test, because `_accept_or_reject` lets it propagate.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import zstandard
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common.adapter_codec import (
    FORMAT,
    VALUE_DTYPES,
    AdapterCodecError,
    decode_adapter,
    encode_adapter,
    max_content_bytes,
)
from common.adapters import AdapterLayout, build_layout
from common.blobwire import encode_blob_chunk
from common.positions import (
    METHODS,
    PositionCodecError,
    decode_positions,
    encode_positions,
    method_of,
    varint,
)
from common.tensor_codec import (
    DEFAULT_ALLOWED_DTYPES,
    CodecError,
    TensorSchema,
    TensorSpec,
    decode_tensors,
    encode_tensors,
    schema_of,
)
from proto.fused.v1 import common_pb2

T = TypeVar("T")
Tensors = dict[str, torch.Tensor]

# Derandomized (same examples every run), no example database (nothing written to the
# checkout), no deadline (shared CI machines are slow): each test sets only max_examples.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


# Every dtype the tensor codec can decode (the default allow-list is a subset).
ALL_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ALLOW_ALL = frozenset(ALL_DTYPES)
DTYPE_STRS = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GIB = 2**30


def _accept_or_reject(decode: Callable[[], T], error: type[ValueError]) -> T | None:
    """The decoder's result, or None when it refused with its documented error type."""
    try:
        return decode()
    except error:
        return None


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """Raw bytes of a tensor: compares bit patterns (-0.0 != 0.0), not values."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _tensor_from_bytes(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Every bit pattern of ``dtype``, except non-finite floats (replaced by -0.0)."""
    u8 = torch.tensor(list(raw), dtype=torch.uint8)
    tensor = (u8 & 1).view(torch.bool) if dtype == torch.bool else u8.view(dtype)
    if dtype.is_floating_point:
        tensor = torch.where(torch.isfinite(tensor), tensor, torch.full_like(tensor, -0.0))
    return tensor.reshape(shape)


# --------------------------------------------------------------------------- strategies

# Realistic state-dict names; no "_" so the reserved "__metadata__" can never come up.
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789.-", min_size=1, max_size=12)
metadata = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@st.composite
def tensor_values(draw: st.DrawFn, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return _tensor_from_bytes(draw(st.binary(min_size=size, max_size=size)), dtype, shape)


@st.composite
def tensor_dicts(
    draw: st.DrawFn, min_size: int = 0, dtypes: list[torch.dtype] = ALL_DTYPES
) -> Tensors:
    out: Tensors = {}
    for name in draw(st.lists(names, min_size=min_size, max_size=4, unique=True)):
        dtype = draw(st.sampled_from(dtypes))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        out[name] = draw(tensor_values(dtype, shape))
    return out


@st.composite
def float32_vectors(draw: st.DrawFn, numel: int) -> torch.Tensor:
    """Either arbitrary float32 bit patterns or float16-representable values."""
    if draw(st.booleans()):
        return draw(tensor_values(torch.float32, (numel,)))
    floats = st.floats(-65504.0, 65504.0, width=16)
    values = draw(st.lists(floats, min_size=numel, max_size=numel))
    return torch.tensor(values, dtype=torch.float32).reshape(numel)


@st.composite
def position_sets(draw: st.DrawFn) -> tuple[np.ndarray[Any, np.dtype[np.int64]], int]:
    """Masks shaped to make each encoding method win: sparse, dense, strided, runs."""
    n = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["sparse", "dense", "strided", "runs", "empty", "full"]))
    if kind in ("sparse", "dense"):
        chosen = draw(st.sets(st.integers(0, n - 1), max_size=min(n, 200)))
        if draw(st.booleans()):  # hypothesis favours small integers: reach the end too
            chosen = {n - 1 - x for x in chosen}
        keep = np.zeros(n, dtype=bool)
        keep[list(chosen)] = True
        if kind == "dense":
            keep = ~keep
        positions = np.flatnonzero(keep)
    elif kind == "strided":
        positions = np.arange(draw(st.integers(0, n - 1)), n, draw(st.integers(1, 64)))
    elif kind == "runs":
        bounds = sorted(draw(st.sets(st.integers(0, n), max_size=12)))
        keep = np.zeros(n, dtype=bool)
        for begin, end in zip(bounds[::2], bounds[1::2], strict=False):
            keep[begin:end] = True
        positions = np.flatnonzero(keep)
    elif kind == "empty":
        positions = np.zeros(0, dtype=np.int64)
    else:
        positions = np.arange(n)
    return positions.astype(np.int64), n


# --------------------------------------------------------------------------- mutations


def _mutate_bytes(data: st.DataObject, payload: bytes) -> bytes:
    """One generic corruption: truncate, flip, splice in, delete or overwrite bytes."""
    kind = data.draw(st.sampled_from(["flip", "splice", "delete", "overwrite", "truncate"]))
    size = len(payload)
    if kind == "truncate" or size == 0:
        return payload[: data.draw(st.integers(min(1, size - 1), max(0, size - 1)))]
    if kind == "flip":
        out = bytearray(payload)
        for at in data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=4)):
            out[at] ^= data.draw(st.integers(1, 255))
        return bytes(out)
    at = data.draw(st.integers(0, size))
    if kind == "splice":
        return payload[:at] + data.draw(st.binary(min_size=1, max_size=24)) + payload[at:]
    length = data.draw(st.integers(1, 24))
    if kind == "delete":
        return payload[:at] + payload[at + length :]
    return payload[:at] + data.draw(st.binary(min_size=length, max_size=length)) + payload[at:]


def _split_safetensors(payload: bytes) -> tuple[list[tuple[str, Any]], bytes]:
    (header_len,) = struct.unpack("<Q", payload[:8])
    header: dict[str, Any] = json.loads(payload[8 : 8 + header_len])
    return list(header.items()), payload[8 + header_len :]


def _join_safetensors(pairs: list[tuple[str, Any]], data: bytes) -> bytes:
    """Header text written pair by pair, so that it can hold duplicate keys."""
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


# Mutation kinds are pytest parameters, not drawn: hypothesis draws the first item of a
# sampled_from far more often than the rest, which starved the others.
SAFETENSORS_MUTATIONS = ["bytes", "header_len", "duplicate", "inflate", "unsqueeze"]


def _mutate_safetensors(data: st.DataObject, payload: bytes, kind: str) -> bytes:
    """Generic corruption, or a lie in the framing: header length, duplicate key, sizes,
    or a shape of the same size with extra unit dimensions (torch handles at most 64)."""
    pairs, buffer = _split_safetensors(payload)
    entries = [i for i, (k, _) in enumerate(pairs) if k != "__metadata__"]
    if kind == "header_len":
        (header_len,) = struct.unpack("<Q", payload[:8])
        new_len = data.draw(
            st.integers(0, 2**64 - 1) | st.integers(max(0, header_len - 16), header_len + 16)
        )
        return struct.pack("<Q", new_len) + payload[8:]
    if kind == "duplicate" and pairs:
        pairs.insert(data.draw(st.integers(0, len(pairs))), data.draw(st.sampled_from(pairs)))
        return _join_safetensors(pairs, buffer)
    if kind == "inflate" and entries:
        i = data.draw(st.sampled_from(entries))
        entry = dict(pairs[i][1])
        grow = data.draw(st.integers(1, 16) | st.sampled_from([2**31, 2**63, 2**64, 2**80]))
        if entry["shape"] and data.draw(st.booleans()):
            shape = list(entry["shape"])
            shape[data.draw(st.integers(0, len(shape) - 1))] += grow
            entry["shape"] = shape
        else:
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][1] + grow]
        pairs[i] = (pairs[i][0], entry)
        return _join_safetensors(pairs, buffer)
    if kind == "unsqueeze" and entries:
        # Prefer non-empty float tensors: the ones whose values torch goes on to check.
        floats = [
            i
            for i in entries
            if pairs[i][1]["dtype"] in ("F64", "F32", "F16", "BF16") and all(pairs[i][1]["shape"])
        ]
        i = data.draw(st.sampled_from(floats or entries))
        entry = dict(pairs[i][1])
        extra = data.draw(st.integers(60, 70) | st.integers(1, 3))
        entry["shape"] = list(entry["shape"]) + [1] * extra
        pairs[i] = (pairs[i][0], entry)
        return _join_safetensors(pairs, buffer)
    return _mutate_bytes(data, payload)


def _fcs_span(frame: bytes, at: int) -> tuple[int, int]:
    """(offset, width) of the Frame_Content_Size field of the zstd frame at ``at``."""
    descriptor = frame[at + 4]
    single_segment = descriptor >> 5 & 1
    start = at + 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3]
    return start, (single_segment, 2, 4, 8)[descriptor >> 6]


def _redeclare(data: st.DataObject, payload: bytes) -> bytes:
    """Make the (first) zstd frame in ``payload`` declare another, often huge, content size."""
    at = payload.find(ZSTD_MAGIC)
    if at < 0:
        return _mutate_bytes(data, payload)
    start, width = _fcs_span(payload, at)
    size = data.draw(
        st.integers(0, 2**64 - 1)
        | st.sampled_from([0, GIB, 2**40, 2**63, 2**64 - 2, 2**64 - 1])
        | st.integers(0, 4096)
    )
    descriptor = (payload[at + 4] & 0x3F) | 0xC0  # an 8-byte content size field
    return (
        payload[: at + 4]
        + bytes([descriptor])
        + payload[at + 5 : start]
        + size.to_bytes(8, "little")
        + payload[start + width :]
    )


def _rle_frame(total: int, declared: int | None) -> bytes:
    """A hand-built zstd frame of ``total`` zero bytes as RLE blocks (4 bytes per 128 KiB),
    declaring ``declared`` as its content size (None: no size field): a cheap, honest bomb."""
    block = 128 * 2**10
    descriptor = 0x00 if declared is None else 0xC0  # 8-byte size field, window descriptor
    frame = ZSTD_MAGIC + bytes([descriptor, 0x38])  # window 2**17 bytes
    if declared is not None:
        frame += declared.to_bytes(8, "little")
    blocks = []
    left = total
    while True:
        size = min(left, block)
        left -= size
        last = int(left == 0)
        blocks.append(((size << 3) | (1 << 1) | last).to_bytes(3, "little") + b"\x00")
        if last:
            return frame + b"".join(blocks)


# --------------------------------------------------------------------------- tensor codec


def _check_tensor_result(
    result: tuple[dict[str, torch.Tensor], dict[str, str]],
    schema: TensorSchema | None,
    allowed: frozenset[torch.dtype],
) -> None:
    tensors, meta = result
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert list(tensors) == sorted(tensors)
    for name, tensor in tensors.items():
        assert name and name != "__metadata__"
        assert tensor.dtype in allowed
        if tensor.is_floating_point():
            assert bool(torch.isfinite(tensor).all()), name
    if schema is not None:
        assert set(tensors) == set(schema)
        for name, spec in schema.items():
            assert tuple(tensors[name].shape) == spec.shape and tensors[name].dtype == spec.dtype


@fuzz(250)
@given(tensors=tensor_dicts(), meta=metadata)
def test_tensor_round_trip_is_bit_exact(tensors: Tensors, meta: dict[str, str]) -> None:
    payload = encode_tensors(tensors, meta)
    out, out_meta = decode_tensors(payload, schema=schema_of(tensors), allowed_dtypes=ALLOW_ALL)
    assert out_meta == meta
    assert list(out) == sorted(tensors)
    for name, tensor in tensors.items():
        assert _same_bits(out[name], tensor), name
    # Deterministic: insertion order does not change the bytes.
    assert encode_tensors(dict(reversed(tensors.items())), meta) == payload


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_tensor_round_trip_keeps_negative_zero_and_subnormals(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    tensor = torch.tensor([-0.0, 0.0, info.smallest_normal / 4, -info.max, info.tiny], dtype=dtype)
    out, _ = decode_tensors(encode_tensors({"w": tensor}))
    assert _same_bits(out["w"], tensor)


@fuzz(150)
@given(
    tensors=tensor_dicts(min_size=1, dtypes=FLOAT_DTYPES),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    data=st.data(),
)
def test_tensor_non_finite_values_are_rejected_naming_the_tensor(
    tensors: Tensors, bad: float, data: st.DataObject
) -> None:
    # The coordinator averages what it decodes: one NaN would poison the global model.
    candidates = sorted(name for name, t in tensors.items() if t.numel())
    if not candidates:
        return
    name = data.draw(st.sampled_from(candidates))
    flat = tensors[name].reshape(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = bad
    with pytest.raises(CodecError, match="not finite") as info:
        decode_tensors(encode_tensors(tensors))
    assert repr(name) in str(info.value)


@fuzz(300)
@given(raw=st.binary(max_size=200), honest_length=st.booleans())
def test_tensor_decode_of_arbitrary_bytes_only_raises_codec_error(
    raw: bytes, honest_length: bool
) -> None:
    payload = struct.pack("<Q", len(raw)) + raw if honest_length else raw
    result = _accept_or_reject(lambda: decode_tensors(payload), CodecError)
    if result is not None:
        _check_tensor_result(result, None, DEFAULT_ALLOWED_DTYPES)


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
)
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPE_STRS, "F8_E4M3", "U64", "f32", ""]) | json_scalars,
        "shape": st.lists(
            st.integers(-1, 5) | st.sampled_from([2**31, 2**62, 2**63, 2**64]), max_size=5
        )
        | json_scalars,
        "data_offsets": st.lists(st.integers(-1, 48), max_size=3) | json_scalars,
    },
    optional={"extra": json_scalars},
)
headers = st.dictionaries(
    names | st.sampled_from(["__metadata__", ""]),
    entries | json_scalars | metadata | st.lists(json_scalars, max_size=3),
    max_size=4,
)


@fuzz(400)
@given(header=headers, buffer=st.binary(max_size=48), nesting=st.sampled_from([0, 0, 2, 5000]))
def test_tensor_decode_of_hostile_headers_only_raises_codec_error(
    header: dict[str, Any], buffer: bytes, nesting: int
) -> None:
    # Deep nesting: the json module raises RecursionError past ~1000 levels.
    text = b"[" * nesting + json.dumps(header).encode() + b"]" * nesting
    payload = struct.pack("<Q", len(text)) + text + buffer
    result = _accept_or_reject(
        lambda: decode_tensors(payload, allowed_dtypes=ALLOW_ALL), CodecError
    )
    if result is not None:
        _check_tensor_result(result, None, ALLOW_ALL)


@pytest.mark.parametrize("kind", SAFETENSORS_MUTATIONS)
@fuzz(100)
@given(tensors=tensor_dicts(), meta=metadata, data=st.data())
def test_tensor_decode_of_mutated_payloads_only_raises_codec_error(
    kind: str, tensors: Tensors, meta: dict[str, str], data: st.DataObject
) -> None:
    payload = _mutate_safetensors(data, encode_tensors(tensors, meta), kind)
    schema = schema_of(tensors) if data.draw(st.booleans()) else None
    result = _accept_or_reject(
        lambda: decode_tensors(payload, schema=schema, allowed_dtypes=ALLOW_ALL), CodecError
    )
    if result is not None:
        _check_tensor_result(result, schema, ALLOW_ALL)


@fuzz(150)
@given(tensors=tensor_dicts(min_size=1), meta=metadata, data=st.data())
def test_tensor_duplicate_header_keys_are_rejected(
    tensors: Tensors, meta: dict[str, str], data: st.DataObject
) -> None:
    # JSON parsers disagree on duplicates (first or last wins): refuse them outright.
    pairs, buffer = _split_safetensors(encode_tensors(tensors, meta))
    key, value = data.draw(st.sampled_from(pairs))
    pairs.insert(data.draw(st.integers(0, len(pairs))), (key, value))
    with pytest.raises(CodecError, match="duplicate key") as info:
        decode_tensors(_join_safetensors(pairs, buffer))
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("kind", ["rename", "missing", "extra", "shape", "dtype"])
@fuzz(40)
@given(tensors=tensor_dicts(min_size=1), data=st.data())
def test_tensor_schema_mismatch_names_the_offending_tensor(
    kind: str, tensors: Tensors, data: st.DataObject
) -> None:
    payload = encode_tensors(tensors)
    schema = schema_of(tensors)
    name = data.draw(st.sampled_from(sorted(tensors)))
    spec = schema[name]
    offender = name
    if kind == "rename":
        offender = data.draw(names.filter(lambda other: other not in schema))
        schema[offender] = schema.pop(name)
    elif kind == "missing":
        del schema[name]
    elif kind == "extra":
        offender = data.draw(names.filter(lambda other: other not in schema))
        schema[offender] = spec
    elif kind == "shape":
        shape = data.draw(
            st.lists(st.integers(0, 5), max_size=5).filter(lambda s: tuple(s) != spec.shape)
        )
        schema[name] = TensorSpec(tuple(shape), spec.dtype)
    else:
        dtype = data.draw(st.sampled_from([d for d in ALL_DTYPES if d != spec.dtype]))
        schema[name] = TensorSpec(spec.shape, dtype)
    with pytest.raises(CodecError) as info:
        decode_tensors(payload, schema=schema, allowed_dtypes=ALLOW_ALL)
    assert repr(offender) in str(info.value), (kind, str(info.value))
    if kind == "rename":
        assert repr(name) in str(info.value)


def test_tensor_deeply_nested_header_is_a_codec_error() -> None:
    # json raises RecursionError past ~1000 levels; it must not escape as such.
    text = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CodecError, match="not valid JSON"):
        decode_tensors(struct.pack("<Q", len(text)) + text)


def test_tensor_with_too_many_dimensions_is_a_codec_error() -> None:
    # torch's elementwise kernels (the finiteness check) refuse more than 64 dimensions.
    header = {"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}
    text = json.dumps(header).encode()
    with pytest.raises(CodecError, match="65 dimensions"):
        decode_tensors(struct.pack("<Q", len(text)) + text + b"\0" * 4)


# --------------------------------------------------------------------------- adapter codec

LAYOUTS = [
    build_layout({"fc.weight": (6, 5), "conv.weight": (2, 1, 3, 3)}, 0.3, seed=1),
    build_layout({"w": (17,)}, 0.5, seed=2),
    build_layout({"a.b": (8, 8), "bias": (8,), "z": (3,)}, 0.1, seed=3),  # some may be empty
]


def _check_adapter_result(result: dict[str, torch.Tensor], layout: AdapterLayout) -> None:
    assert list(result) == list(layout.names)
    for name in layout.names:
        tensor = result[name]
        assert tensor.dtype == torch.float32
        assert tuple(tensor.shape) == (layout.indices[name].numel(),)
        assert bool(torch.isfinite(tensor).all())


def _zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(raw)


def _adapter_values(data: st.DataObject, layout: AdapterLayout) -> Tensors:
    return {n: data.draw(float32_vectors(layout.indices[n].numel())) for n in layout.names}


@fuzz(200)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(sorted(VALUE_DTYPES)), data=st.data())
def test_adapter_round_trip_is_bit_exact_in_the_upload_dtype(
    layout: AdapterLayout, dtype: str, data: st.DataObject
) -> None:
    values = _adapter_values(data, layout)
    cast = {n: v.to(VALUE_DTYPES[dtype]) for n, v in values.items()}
    overflow = sorted(n for n, v in cast.items() if not bool(torch.isfinite(v).all()))
    if overflow:  # e.g. 1e30 in float16: refused, never sent as Inf
        with pytest.raises(AdapterCodecError, match="not all finite") as info:
            encode_adapter(layout, values, dtype=dtype)
        assert repr(overflow[0]) in str(info.value)
        return
    out = decode_adapter(encode_adapter(layout, values, dtype=dtype), layout, dtype=dtype)
    _check_adapter_result(out, layout)
    for name in layout.names:
        assert _same_bits(out[name], cast[name].to(torch.float32)), name


@fuzz(100)
@given(layout=st.sampled_from(LAYOUTS), bad=st.sampled_from([math.nan, math.inf]), data=st.data())
def test_adapter_non_finite_values_are_refused_both_ways(
    layout: AdapterLayout, bad: float, data: st.DataObject
) -> None:
    values = _adapter_values(data, layout)
    name = data.draw(st.sampled_from([n for n in layout.names if values[n].numel()]))
    values[name][data.draw(st.integers(0, values[name].numel() - 1))] = bad
    with pytest.raises(AdapterCodecError, match="not all finite") as info:
        encode_adapter(layout, values)
    assert repr(name) in str(info.value)
    # A hostile participant skips encode_adapter and builds the payload itself.
    hostile = _zstd(encode_tensors(values, {"format": FORMAT, "mask_digest": layout.digest}))
    with pytest.raises(AdapterCodecError, match="not finite") as info:
        decode_adapter(hostile, layout)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("kind", ["length", "shape", "dtype", "rename", "missing"])
@fuzz(30)
@given(layout=st.sampled_from(LAYOUTS), data=st.data())
def test_adapter_payload_off_the_layout_names_the_offending_tensor(
    kind: str, layout: AdapterLayout, data: st.DataObject
) -> None:
    values = _adapter_values(data, layout)
    name = data.draw(st.sampled_from(layout.names))
    offender = name
    if kind == "length":
        values[name] = torch.zeros(values[name].numel() + data.draw(st.integers(1, 5)))
    elif kind == "shape":
        values[name] = values[name].reshape(1, -1)
    elif kind == "dtype":
        values[name] = values[name].to(torch.float64)
    elif kind == "rename":
        offender = data.draw(names.filter(lambda other: other not in layout.names))
        values[offender] = values.pop(name)
    else:
        del values[name]
    hostile = _zstd(encode_tensors(values, {"format": FORMAT, "mask_digest": layout.digest}))
    with pytest.raises(AdapterCodecError) as info:
        decode_adapter(hostile, layout)
    assert repr(offender) in str(info.value), (kind, str(info.value))
    # Honest bytes for another layout are refused too (its mask digest differs).
    other = data.draw(st.sampled_from([x for x in LAYOUTS if x is not layout]))
    honest = encode_adapter(other, _adapter_values(data, other))
    with pytest.raises(AdapterCodecError):
        decode_adapter(honest, layout)


@fuzz(300)
@given(
    layout=st.sampled_from(LAYOUTS),
    raw=st.binary(max_size=300),
    wrap=st.sampled_from(["none", "zstd", "zstd-no-size"]),
)
def test_adapter_decode_of_arbitrary_bytes_only_raises_adapter_error(
    layout: AdapterLayout, raw: bytes, wrap: str
) -> None:
    if wrap == "zstd":
        raw = _zstd(raw)
    elif wrap == "zstd-no-size":
        raw = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    result = _accept_or_reject(lambda: decode_adapter(raw, layout), AdapterCodecError)
    if result is not None:
        _check_adapter_result(result, layout)


@pytest.mark.parametrize("where", ["compressed", "declared-size", "inside"])
@fuzz(150)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(sorted(VALUE_DTYPES)), data=st.data())
def test_adapter_decode_of_mutated_payloads_only_raises_adapter_error(
    where: str, layout: AdapterLayout, dtype: str, data: st.DataObject
) -> None:
    values = {n: torch.zeros(layout.indices[n].numel()) for n in layout.names}
    payload = encode_adapter(layout, values, dtype=dtype)
    if where == "compressed":
        payload = _mutate_bytes(data, payload)
    elif where == "declared-size":
        payload = _redeclare(data, payload)
    else:  # corrupt the safetensors inside, then compress honestly
        raw = zstandard.ZstdDecompressor().decompress(payload)
        kind = data.draw(st.permutations(SAFETENSORS_MUTATIONS))[0]  # evenly spread
        payload = _zstd(_mutate_safetensors(data, raw, kind))
    job_dtype = data.draw(st.none() | st.just(dtype))
    result = _accept_or_reject(
        lambda: decode_adapter(payload, layout, job_dtype), AdapterCodecError
    )
    if result is not None:
        _check_adapter_result(result, layout)


def _traced_peak(run: Callable[[], object]) -> int:
    """Peak Python-heap bytes allocated while ``run`` executes (bytes objects included)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_adapter_decompression_bomb_is_refused_before_allocating_it() -> None:
    layout = LAYOUTS[0]
    # The measurement is real: an honest 16 MiB decompression peaks at 16 MiB or more.
    honest = _rle_frame(16 * 2**20, 16 * 2**20)
    assert _traced_peak(lambda: zstandard.ZstdDecompressor().decompress(honest)) >= 16 * 2**20

    bomb = _rle_frame(GIB, GIB)  # 32 KiB that expand to, and declare, 1 GiB
    assert len(bomb) < 64 * 2**10
    errors: list[str] = []

    def decode(payload: bytes) -> None:
        with pytest.raises(AdapterCodecError) as info:
            decode_adapter(payload, layout, max_bytes=len(payload))  # past the compressed bound
        errors.append(str(info.value))

    assert _traced_peak(lambda: decode(bomb)) < 4 * 2**20
    assert str(GIB) in errors[-1] and "decompression bomb" in errors[-1]
    # Declaring nothing, or a harmless size, does not help: nothing past the bound is made.
    assert _traced_peak(lambda: decode(_rle_frame(GIB, None))) < 4 * 2**20
    assert "does not declare" in errors[-1]
    assert _traced_peak(lambda: decode(_rle_frame(GIB, max_content_bytes(layout)))) < 4 * 2**20
    assert "could not be decompressed" in errors[-1]
    # And with the default limit the 32 KiB bomb is already too big compressed.
    with pytest.raises(AdapterCodecError, match="compressed, more than the limit"):
        decode_adapter(bomb, layout)


# --------------------------------------------------------------------------- positions


def _check_positions_result(result: torch.Tensor, n: int, max_count: int | None) -> None:
    assert result.dtype == torch.int64 and result.dim() == 1
    if result.numel():
        assert int(result[0]) >= 0 and int(result[-1]) < n
        assert bool((result[1:] > result[:-1]).all())
    if max_count is not None:
        assert result.numel() <= max_count


def _seal(head: bytes) -> bytes:
    return head + zlib.crc32(head).to_bytes(4, "little")


@fuzz(400)
@given(mask=position_sets())
def test_positions_round_trip_exactly_and_respect_max_count(
    mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int],
) -> None:
    positions, n = mask
    payload = encode_positions(positions, n)
    event(method_of(payload))  # shows in --hypothesis-show-statistics: every method is hit
    count = int(positions.size)
    out = decode_positions(payload, n, max_count=count)
    assert torch.equal(out, torch.from_numpy(positions))
    assert encode_positions(torch.from_numpy(positions), n) == payload  # deterministic
    if count:
        with pytest.raises(PositionCodecError, match="max_count"):
            decode_positions(payload, n, max_count=count - 1)


def test_position_strategy_reaches_every_method() -> None:
    seen: set[str] = set()

    @fuzz(150)
    @given(mask=position_sets())
    def collect(mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int]) -> None:
        seen.add(method_of(encode_positions(*mask)))

    collect()
    assert seen == set(METHODS.values())


ns = st.integers(1, 3000) | st.sampled_from([2**20, 2**40])


@fuzz(400)
@given(
    tag=st.sampled_from(sorted(METHODS)) | st.integers(0, 255),
    body=st.binary(max_size=64),
    n=ns,
    max_count=st.none() | st.integers(0, 3000),
    sealed=st.booleans(),
)
def test_positions_decode_of_arbitrary_bytes_only_raises_position_error(
    tag: int, body: bytes, n: int, max_count: int | None, sealed: bool
) -> None:
    if n > 2**20 and max_count is None:
        max_count = 3000  # an unbounded complement of 2**40 positions is a legitimate 1 TiB
    payload = _seal(bytes([tag]) + body) if sealed else bytes([tag]) + body
    result = _accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


@pytest.mark.parametrize("how", ["bytes", "count", "declared-size", "smaller-n", "larger-n"])
@fuzz(100)
@given(mask=position_sets(), reseal=st.booleans(), bounded=st.booleans(), data=st.data())
def test_positions_decode_of_mutated_payloads_only_raises_position_error(
    how: str,
    mask: tuple[np.ndarray[Any, np.dtype[np.int64]], int],
    reseal: bool,
    bounded: bool,
    data: st.DataObject,
) -> None:
    positions, n = mask
    payload = encode_positions(positions, n)
    if how == "smaller-n" and n > 1:  # an intact payload for a tensor of another size
        n = data.draw(st.integers(max(1, n // 2), n - 1))
    elif how == "larger-n":
        n = data.draw(st.integers(n + 1, 2 * n))
    elif how == "count":  # lie about the number of positions (the varint after the tag)
        rest = payload[1:]
        skip = next(i for i, b in enumerate(rest) if b < 0x80) + 1
        lie = data.draw(st.integers(0, 2**64 - 1) | st.integers(0, 2 * n))
        payload = payload[:1] + varint(lie) + rest[skip:]
    elif how == "declared-size" and payload[0] in (3, 4):
        payload = _redeclare(data, payload)
    else:
        payload = _mutate_bytes(data, payload)
    if reseal and len(payload) >= 5:  # a valid checksum, so the structural checks must hold
        payload = _seal(payload[:-4])
    max_count = int(positions.size) if bounded else None
    result = _accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


@fuzz(400)
@given(
    tag=st.sampled_from(sorted(METHODS)),
    n=st.integers(1, 64),
    count=st.integers(0, 12),
    m=st.integers(1, 70),
    width=st.integers(0, 3),
    content=st.binary(max_size=24),
    data=st.data(),
)
def test_positions_decode_of_well_framed_hostile_bodies_only_raises_position_error(
    tag: int, n: int, count: int, m: int, width: int, content: bytes, data: st.DataObject
) -> None:
    # Honest framing (counts, sizes, checksum) around arbitrary content, so that decoding
    # gets past the framing checks and into the gap arithmetic.
    if tag in (1, 2):  # Golomb: varint count | varint m | bits
        body = varint(count) + varint(m) + content
    elif tag == 3:  # planes: varint count | width | zstd frame of count * width bytes
        raw = data.draw(st.binary(min_size=count * width, max_size=count * width))
        body = varint(count) + bytes([width]) + _zstd(raw)
    else:  # bitmap: zstd frame of ceil(n / 8) bytes
        size = (n + 7) // 8
        body = _zstd(data.draw(st.binary(min_size=size, max_size=size)))
    max_count = data.draw(st.none() | st.integers(0, n))
    payload = _seal(bytes([tag]) + body)
    result = _accept_or_reject(lambda: decode_positions(payload, n, max_count), PositionCodecError)
    if result is not None:
        _check_positions_result(result, n, max_count)


def test_positions_complement_out_of_range_is_a_position_error() -> None:
    # Complement payload for n=10 whose 2 absent "positions" (gaps 9, 9) reach index 19.
    bits = np.array([1] * 9 + [0] + [1] * 9 + [0] + [0] * 4, dtype=np.uint8)
    payload = _seal(bytes([2]) + varint(2) + varint(1) + np.packbits(bits).tobytes())
    with pytest.raises(PositionCodecError, match="outside"):
        decode_positions(payload, 10)


def test_positions_bitmap_bomb_is_refused_before_allocating_it() -> None:
    n = 4096  # an honest bitmap holds 512 bytes
    payload = _seal(bytes([4]) + _rle_frame(GIB, GIB))
    errors: list[str] = []

    def decode() -> None:
        with pytest.raises(PositionCodecError) as info:
            decode_positions(payload, n)
        errors.append(str(info.value))

    assert _traced_peak(decode) < 4 * 2**20
    assert str(GIB) in errors[0] and "decompression bomb" in errors[0]


# --------------------------------------------------------------------------- BlobChunk


uint64s = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 127, 128, 2**63, 2**64 - 1])


@fuzz(300)
@given(blob_id=st.text(max_size=70), offset=uint64s, chunk=st.binary(max_size=300), total=uint64s)
def test_blob_chunk_framing_equals_protobuf_and_round_trips(
    blob_id: str, offset: int, chunk: bytes, total: int
) -> None:
    wire = encode_blob_chunk(blob_id, offset, chunk, total)
    expected = common_pb2.BlobChunk(blob_id=blob_id, offset=offset, data=chunk, total_size=total)
    assert wire == expected.SerializeToString()
    parsed = common_pb2.BlobChunk.FromString(wire)
    assert (parsed.blob_id, parsed.offset, parsed.data, parsed.total_size) == (
        blob_id,
        offset,
        chunk,
        total,
    )


@pytest.mark.parametrize("value", [-1, -(2**70), 2**64, 2**80])
def test_blob_chunk_out_of_range_integers_raise_like_protobuf(value: int) -> None:
    # A negative value used to loop forever in the varint writer.
    with pytest.raises(ValueError):
        common_pb2.BlobChunk(offset=value)
    with pytest.raises(ValueError, match="varint"):
        encode_blob_chunk("id", value, b"x", 1)
    with pytest.raises(ValueError, match="varint"):
        encode_blob_chunk("id", 0, b"x", value)


@fuzz(300)
@given(
    blob_id=st.text(max_size=70),
    offset=uint64s,
    chunk=st.binary(max_size=64),
    total=uint64s,
    data=st.data(),
)
def test_blob_chunk_parsing_of_mutated_frames_only_raises_decode_error(
    blob_id: str, offset: int, chunk: bytes, total: int, data: st.DataObject
) -> None:
    # Uploads are parsed by protobuf: a corrupt frame is a DecodeError or some valid message.
    wire = _mutate_bytes(data, encode_blob_chunk(blob_id, offset, chunk, total))
    try:
        parsed = common_pb2.BlobChunk.FromString(wire)
    except DecodeError:
        return
    assert 0 <= parsed.offset < 2**64 and 0 <= parsed.total_size < 2**64
    assert isinstance(parsed.blob_id, str) and isinstance(parsed.data, bytes)
