"""Property-based fuzzing of the sparse adapter codec (common/codecs/adapter_codec.py),
bombs included."""

from __future__ import annotations

import math

import pytest
import torch
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from fused.common.codecs.adapter_codec import (
    FORMAT,
    VALUE_DTYPES,
    AdapterCodecError,
    decode_adapter,
    encode_adapter,
    max_content_bytes,
)
from fused.common.codecs.tensor_codec import (
    encode_tensors,
)
from fused.common.ml.adapters import AdapterLayout, build_layout
from tests.unit.fuzzing import (
    GIB,
    SAFETENSORS_MUTATIONS,
    Tensors,
    accept_or_reject,
    float32_vectors,
    fuzz,
    mutate_bytes,
    mutate_safetensors,
    names,
    redeclare,
    rle_frame,
    same_bits,
    traced_peak,
    zstd_frame,
)

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
        assert same_bits(out[name], cast[name].to(torch.float32)), name


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
    hostile = zstd_frame(encode_tensors(values, {"format": FORMAT, "mask_digest": layout.digest}))
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
    hostile = zstd_frame(encode_tensors(values, {"format": FORMAT, "mask_digest": layout.digest}))
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
        raw = zstd_frame(raw)
    elif wrap == "zstd-no-size":
        raw = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    result = accept_or_reject(lambda: decode_adapter(raw, layout), AdapterCodecError)
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
        payload = mutate_bytes(data, payload)
    elif where == "declared-size":
        payload = redeclare(data, payload)
    else:  # corrupt the safetensors inside, then compress honestly
        raw = zstandard.ZstdDecompressor().decompress(payload)
        kind = data.draw(st.permutations(SAFETENSORS_MUTATIONS))[0]  # evenly spread
        payload = zstd_frame(mutate_safetensors(data, raw, kind))
    job_dtype = data.draw(st.none() | st.just(dtype))
    result = accept_or_reject(lambda: decode_adapter(payload, layout, job_dtype), AdapterCodecError)
    if result is not None:
        _check_adapter_result(result, layout)


def test_adapter_decompression_bomb_is_refused_before_allocating_it() -> None:
    layout = LAYOUTS[0]
    # The measurement is real: an honest 16 MiB decompression peaks at 16 MiB or more.
    honest = rle_frame(16 * 2**20, 16 * 2**20)
    assert traced_peak(lambda: zstandard.ZstdDecompressor().decompress(honest)) >= 16 * 2**20

    bomb = rle_frame(GIB, GIB)  # 32 KiB that expand to, and declare, 1 GiB
    assert len(bomb) < 64 * 2**10
    errors: list[str] = []

    def decode(payload: bytes) -> None:
        with pytest.raises(AdapterCodecError) as info:
            decode_adapter(payload, layout, max_bytes=len(payload))  # past the compressed bound
        errors.append(str(info.value))

    assert traced_peak(lambda: decode(bomb)) < 4 * 2**20
    assert str(GIB) in errors[-1] and "decompression bomb" in errors[-1]
    # Declaring nothing, or a harmless size, does not help: nothing past the bound is made.
    assert traced_peak(lambda: decode(rle_frame(GIB, None))) < 4 * 2**20
    assert "does not declare" in errors[-1]
    assert traced_peak(lambda: decode(rle_frame(GIB, max_content_bytes(layout)))) < 4 * 2**20
    assert "could not be decompressed" in errors[-1]
    # And with the default limit the 32 KiB bomb is already too big compressed.
    with pytest.raises(AdapterCodecError, match="compressed, more than the limit"):
        decode_adapter(bomb, layout)
