"""Property-based fuzzing of the portable adapter file (common/codecs/adapter_file.py): random
changes round-trip bit for bit, and hostile files raise nothing but AdapterFileError."""

from __future__ import annotations

import json
import math
import struct

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from fused.common.codecs.adapter_file import (
    FORMAT,
    VALUE_DTYPES,
    AdapterFile,
    AdapterFileError,
    build_adapter_file,
    decode_adapter_file,
)
from fused.common.codecs.adapter_file_apply import apply_adapter_file, merge_into, unmerge
from fused.common.codecs.tensor_codec import encode_tensors, state_dict_digest
from fused.common.ml.adapters import build_layout, merge_weights
from tests.unit.fuzzing import (
    ALL_DTYPES,
    SAFETENSORS_MUTATIONS,
    Tensors,
    accept_or_reject,
    fuzz,
    mutate_safetensors,
    names,
    tensor_values,
)

SHA_A, SHA_B = "a" * 64, "b" * 64
INT_RANGES = {
    torch.uint8: (0, 2**8 - 1),
    torch.int8: (-(2**7), 2**7 - 1),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.int64: (-(2**63), 2**63 - 1),
}


def _honest_pair() -> tuple[Tensors, Tensors]:
    """Three value dtypes, gaps of uint8 and int16, one unchanged tensor."""
    shapes = {"conv.weight": (2, 1, 3, 3), "fc.weight": (6, 5), "fc.bias": (6,), "big": (900,)}
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    base["fc.weight"], base["fc.bias"] = base["fc.weight"].half(), base["fc.bias"].bfloat16()
    base["untouched"] = torch.zeros(4)
    layout = build_layout({n: shapes[n] for n in ("conv.weight", "fc.weight", "fc.bias")}, 0.4, 1)
    values = {n: torch.randn(layout.indices[n].numel(), generator=gen) for n in layout.names}
    merged = merge_weights(base, layout, values)
    merged["big"] = base["big"].clone()
    merged["big"][[2, 600, 899]] = 5.0
    return base, merged


BASE, MERGED = _honest_pair()
HONEST = build_adapter_file(BASE, MERGED, SHA_A, SHA_B, {"version": "v1"})


def _check_accepted(f: AdapterFile) -> None:
    """What a decoded file promises, and that it applies to a model of its shapes."""
    state: Tensors = {}
    for name, patch in f.patches.items():
        numel = math.prod(patch.shape)
        positions = patch.positions
        assert positions.dtype == torch.int64 and positions.dim() == 1 and positions.numel()
        assert bool((positions[1:] > positions[:-1]).all())
        assert int(positions[0]) >= 0 and int(positions[-1]) < numel
        assert patch.values.dtype in VALUE_DTYPES and patch.values.shape == positions.shape
        assert bool(torch.isfinite(patch.values).all())
        state[name] = torch.zeros(patch.shape, dtype=patch.values.dtype)
    applied = apply_adapter_file(state, f)
    for name, patch in f.patches.items():
        assert torch.equal(applied[name].reshape(-1)[patch.positions], patch.values)
    # On the honest base it fits or is refused; nothing else escapes.
    accept_or_reject(lambda: apply_adapter_file(BASE, f), AdapterFileError)


# --------------------------------------------------------------------------- round trips


@st.composite
def changes(draw: st.DrawFn) -> tuple[Tensors, Tensors]:
    base: Tensors = {}
    merged: Tensors = {}
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        dtype = draw(st.sampled_from(VALUE_DTYPES))
        if draw(st.booleans()):
            shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        else:  # long and sparse: wide gaps
            shape = (draw(st.sampled_from([300, 3000, 70_000])),)
        numel = math.prod(shape)
        base[name] = draw(tensor_values(dtype, shape)) if numel < 1000 else torch.zeros(shape)
        base[name] = base[name].to(dtype)
        merged[name] = base[name].clone()
        if numel:
            at = sorted(draw(st.sets(st.integers(0, numel - 1), max_size=12)))
            new = draw(tensor_values(dtype, (len(at),)))
            merged[name].view(-1)[at] = new  # may equal the base: then it is not stored
    return base, merged


@fuzz(100)
@given(pair=changes())
def test_random_changes_round_trip_bit_for_bit_and_revert(pair: tuple[Tensors, Tensors]) -> None:
    base, merged = pair
    f = decode_adapter_file(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
    assert state_dict_digest(apply_adapter_file(base, f)) == state_dict_digest(merged)
    live = {n: t.clone() for n, t in base.items()}
    saved = merge_into(live, f)
    assert state_dict_digest(live) == state_dict_digest(merged)
    unmerge(live, saved)
    assert state_dict_digest(live) == state_dict_digest(base)


# --------------------------------------------------------------------------- hostile files


@fuzz(200)
@given(raw=st.binary(max_size=200), honest_length=st.booleans())
def test_arbitrary_bytes_only_raise_adapter_file_error(raw: bytes, honest_length: bool) -> None:
    payload = struct.pack("<Q", len(raw)) + raw if honest_length else raw
    result = accept_or_reject(lambda: decode_adapter_file(payload), AdapterFileError)
    if result is not None:
        _check_accepted(result)


@pytest.mark.parametrize("kind", SAFETENSORS_MUTATIONS)
@fuzz(60)
@given(data=st.data())
def test_mutated_framing_only_raises_adapter_file_error(kind: str, data: st.DataObject) -> None:
    payload = mutate_safetensors(data, HONEST, kind)
    result = accept_or_reject(lambda: decode_adapter_file(payload), AdapterFileError)
    if result is not None:
        _check_accepted(result)


def _int_tensor(data: st.DataObject) -> torch.Tensor:
    dtype = data.draw(st.sampled_from([*INT_RANGES, torch.float32]))
    length = data.draw(st.integers(0, 6))
    if dtype == torch.float32:
        return torch.rand(length)
    low, high = INT_RANGES[dtype]
    edges = st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2, 899, 900])
    entries = data.draw(st.lists(st.integers(low, high) | edges, min_size=length, max_size=length))
    return torch.tensor(entries, dtype=torch.int64).to(dtype)


def _shapes_text(data: st.DataObject, shapes: dict[str, list[int]]) -> str:
    if data.draw(st.booleans()):
        return data.draw(st.text(alphabet='{}[],:"0123456789- bigw.', max_size=30))
    name = data.draw(st.sampled_from(sorted(shapes)))
    dims = data.draw(st.lists(st.integers(-1, 40) | st.sampled_from([2**40, 2**64]), max_size=3))
    altered = (
        {**shapes, name: dims}
        if data.draw(st.booleans())
        else {k: v for k, v in shapes.items() if k != name}
    )
    separators = data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(altered, sort_keys=data.draw(st.booleans()), separators=separators)


MUTATIONS = ["gaps", "values", "metadata", "shapes", "drop", "rename"]


@pytest.mark.parametrize("kind", MUTATIONS)
@fuzz(60)
@given(data=st.data())
def test_mutated_content_only_raises_adapter_file_error(kind: str, data: st.DataObject) -> None:
    tensors = dict(safetensors.torch.load(HONEST))
    meta = _metadata(HONEST)
    key = data.draw(st.sampled_from(sorted(tensors)))
    if kind == "gaps":
        tensors[key.rpartition("::")[0] + "::gaps"] = _int_tensor(data)
    elif kind == "values":
        dtype = data.draw(st.sampled_from(ALL_DTYPES))
        length = data.draw(st.integers(0, 30))
        tensors[key.rpartition("::")[0] + "::values"] = data.draw(tensor_values(dtype, (length,)))
    elif kind == "metadata":
        field = data.draw(st.sampled_from(sorted(meta)))
        meta[field] = data.draw(st.sampled_from([FORMAT, "", "x", SHA_A.upper(), SHA_B, "{}"]))
    elif kind == "shapes":
        meta["shapes"] = _shapes_text(data, json.loads(meta["shapes"]))
    elif kind == "drop":
        if data.draw(st.booleans()):
            del tensors[key]
        else:
            del meta[data.draw(st.sampled_from(sorted(meta)))]
    else:
        tensors[data.draw(names | st.sampled_from(["big::gap", "::values", "x::values"]))] = (
            tensors.pop(key)
        )
    payload = encode_tensors(tensors, meta)
    result = accept_or_reject(lambda: decode_adapter_file(payload), AdapterFileError)
    if result is not None:
        _check_accepted(result)


def _metadata(payload: bytes) -> dict[str, str]:
    (header_len,) = struct.unpack("<Q", payload[:8])
    meta: dict[str, str] = json.loads(payload[8 : 8 + header_len])["__metadata__"]
    return meta
