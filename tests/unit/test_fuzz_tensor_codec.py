"""Property-based fuzzing of the strict safetensors codec (common/codecs/tensor_codec.py)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fused.common.codecs.tensor_codec import (
    DEFAULT_ALLOWED_DTYPES,
    CodecError,
    TensorSchema,
    TensorSpec,
    decode_tensors,
    encode_tensors,
    schema_of,
)
from tests.unit.fuzzing import (
    ALL_DTYPES,
    ALLOW_ALL,
    DTYPE_STRS,
    FLOAT_DTYPES,
    SAFETENSORS_MUTATIONS,
    Tensors,
    accept_or_reject,
    fuzz,
    join_safetensors,
    metadata,
    mutate_safetensors,
    names,
    same_bits,
    split_safetensors,
    tensor_dicts,
)

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
        assert same_bits(out[name], tensor), name
    # Deterministic: insertion order does not change the bytes.
    assert encode_tensors(dict(reversed(tensors.items())), meta) == payload


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_tensor_round_trip_keeps_negative_zero_and_subnormals(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    tensor = torch.tensor([-0.0, 0.0, info.smallest_normal / 4, -info.max, info.tiny], dtype=dtype)
    out, _ = decode_tensors(encode_tensors({"w": tensor}))
    assert same_bits(out["w"], tensor)


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
    result = accept_or_reject(lambda: decode_tensors(payload), CodecError)
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
    result = accept_or_reject(lambda: decode_tensors(payload, allowed_dtypes=ALLOW_ALL), CodecError)
    if result is not None:
        _check_tensor_result(result, None, ALLOW_ALL)


@pytest.mark.parametrize("kind", SAFETENSORS_MUTATIONS)
@fuzz(100)
@given(tensors=tensor_dicts(), meta=metadata, data=st.data())
def test_tensor_decode_of_mutated_payloads_only_raises_codec_error(
    kind: str, tensors: Tensors, meta: dict[str, str], data: st.DataObject
) -> None:
    payload = mutate_safetensors(data, encode_tensors(tensors, meta), kind)
    schema = schema_of(tensors) if data.draw(st.booleans()) else None
    result = accept_or_reject(
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
    pairs, buffer = split_safetensors(encode_tensors(tensors, meta))
    key, value = data.draw(st.sampled_from(pairs))
    pairs.insert(data.draw(st.integers(0, len(pairs))), (key, value))
    with pytest.raises(CodecError, match="duplicate key") as info:
        decode_tensors(join_safetensors(pairs, buffer))
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
