"""Property-based fuzzing of the sparse adapter codec (common/codecs/adapter_codec.py),
bombs included, and of its reading of stored fused-adapter-v2 payloads (adapter_codec_v2)."""

from __future__ import annotations

import math

import pytest
import torch
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from fused.common.codecs.adapter_codec import (
    MAGIC,
    VALUE_DTYPES,
    AdapterCodecError,
    Section,
    assemble,
    decode_adapter,
    default_max_bytes,
    encode_adapter,
)
from fused.common.codecs.positions import encode_positions
from fused.common.codecs.varint import varint
from fused.common.ml.adapters import AdapterLayout, build_layout
from tests.unit.adapter_v2_payloads import encode_v2, frame
from tests.unit.fuzzing import (
    GIB,
    SAFETENSORS_MUTATIONS,
    Tensors,
    accept_or_reject,
    float32_vectors,
    fuzz,
    mutate_bytes,
    mutate_safetensors,
    redeclare,
    rle_frame,
    same_bits,
    traced_peak,
    zstd_frame,
)

LAYOUTS = [
    build_layout({"fc.weight": (6, 5), "conv.weight": (2, 1, 3, 3)}, 0.3, seed=1),
    build_layout({"w": (17,)}, 0.5, seed=2),
    build_layout({"a.b": (8, 8), "bias": (8,), "z": (3,)}, 0.1, seed=3),  # one position each
    build_layout({"big": (40, 50)}, 0.2, seed=4),  # counts and positions past one varint byte
]


def _check_adapter_result(result: dict[str, torch.Tensor], layout: AdapterLayout) -> None:
    assert list(result) == list(layout.names)
    for name in layout.names:
        tensor = result[name]
        assert tensor.dtype == torch.float32
        assert tuple(tensor.shape) == (layout.indices[name].numel(),)
        assert bool(torch.isfinite(tensor).all())


def _adapter_values(data: st.DataObject, layout: AdapterLayout) -> Tensors:
    """Drawn values, with a drawn share of them zero (what dead units leave)."""
    values = {}
    for name in layout.names:
        vector = data.draw(float32_vectors(layout.indices[name].numel()))
        zero_share = data.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
        vector[torch.rand(vector.numel(), generator=gen) < zero_share] = 0.0
        values[name] = vector
    return values


def _nonzero_ones(layout: AdapterLayout, values: Tensors) -> torch.Tensor:
    """The values joined, with every bit-zero value made 1.0: a section may then be `all`."""
    joined = torch.cat([values[n] for n in layout.names])
    return torch.where(joined.view(torch.int32) == 0, torch.ones_like(joined), joined)


def _sections_all(layout: AdapterLayout) -> list[Section]:
    return [Section(int(layout.indices[n].numel())) for n in layout.names]


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
    payload = encode_adapter(layout, values, dtype=dtype)
    assert len(payload) <= default_max_bytes(layout)
    out = decode_adapter(payload, layout, dtype=dtype)
    _check_adapter_result(out, layout)
    for name in layout.names:
        assert same_bits(out[name], cast[name].to(torch.float32)), name


@fuzz(100)
@given(layout=st.sampled_from(LAYOUTS), bad=st.sampled_from([math.nan, math.inf]), data=st.data())
def test_adapter_non_finite_values_are_refused_both_ways(
    layout: AdapterLayout, bad: float, data: st.DataObject
) -> None:
    values = _adapter_values(data, layout)
    name = data.draw(st.sampled_from(layout.names))
    values[name][data.draw(st.integers(0, values[name].numel() - 1))] = bad
    with pytest.raises(AdapterCodecError, match="not all finite") as info:
        encode_adapter(layout, values)
    assert repr(name) in str(info.value)
    # A hostile participant skips encode_adapter and lays out the payload itself.
    joined = _nonzero_ones(layout, values)
    hostile = assemble("float32", bytes.fromhex(layout.digest), _sections_all(layout), joined)
    with pytest.raises(AdapterCodecError, match="not finite") as info:
        decode_adapter(hostile, layout)
    assert repr(name) in str(info.value)


def _hostile_section(data: st.DataObject, m: int, kind: str) -> tuple[Section, int]:
    """A section that is wrong in the way ``kind`` says, and how many values it claims."""
    if kind == "count":
        count = m + data.draw(st.integers(1, 5))
        return Section(count), count
    if kind == "zero":
        return Section(m), m  # its values will hold a +0.0
    count = data.draw(st.integers(1, max(1, m - 1)))
    listed = min(count, m - count) or 1
    places = torch.arange(listed) if kind == "crc" else torch.arange(listed + 1) % m
    positions = encode_positions(torch.unique(places), m)
    if kind == "crc":
        positions = positions[:-1] + bytes([positions[-1] ^ 0x55])
    return Section(count, positions), count


@pytest.mark.parametrize("kind", ["count", "zero", "crc", "listed"])
@fuzz(30)
@given(layout=st.sampled_from(LAYOUTS), data=st.data())
def test_adapter_payload_off_the_layout_names_the_offending_tensor(
    kind: str, layout: AdapterLayout, data: st.DataObject
) -> None:
    candidates = [
        n for n in layout.names if kind in ("count", "zero") or layout.indices[n].numel() > 1
    ]
    if not candidates:
        return
    name = data.draw(st.sampled_from(candidates))
    sections, total = [], 0
    for n in layout.names:
        m = int(layout.indices[n].numel())
        section, count = _hostile_section(data, m, kind) if n == name else (Section(m), m)
        sections.append(section)
        total += count
    values = torch.ones(total)
    if kind == "zero":
        start = sum(s.count for s in sections[: layout.names.index(name)])
        values[start] = 0.0
    hostile = assemble("float32", bytes.fromhex(layout.digest), sections, values)
    with pytest.raises(AdapterCodecError) as info:
        decode_adapter(hostile, layout)
    assert repr(name) in str(info.value), (kind, str(info.value))
    # Honest bytes for another layout are refused too (its mask digest differs); a larger
    # layout's may exceed this one's size limit, which is checked first.
    other = data.draw(st.sampled_from([x for x in LAYOUTS if x is not layout]))
    honest = encode_adapter(other, _adapter_values(data, other))
    with pytest.raises(AdapterCodecError, match="different mask"):
        decode_adapter(honest, layout, max_bytes=len(honest))


@fuzz(300)
@given(
    layout=st.sampled_from(LAYOUTS),
    raw=st.binary(max_size=300),
    wrap=st.sampled_from(["none", "header", "zstd"]),
)
def test_adapter_decode_of_arbitrary_bytes_only_raises_adapter_error(
    layout: AdapterLayout, raw: bytes, wrap: str
) -> None:
    if wrap == "header":  # past the header checks, into the sections
        raw = MAGIC + b"\x00" + bytes.fromhex(layout.digest) + raw
    elif wrap == "zstd":
        raw = zstd_frame(raw)
    result = accept_or_reject(lambda: decode_adapter(raw, layout), AdapterCodecError)
    if result is not None:
        _check_adapter_result(result, layout)


@pytest.mark.parametrize("where", ["bytes", "declared-size", "sections"])
@fuzz(150)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(sorted(VALUE_DTYPES)), data=st.data())
def test_adapter_decode_of_mutated_payloads_only_raises_adapter_error(
    where: str, layout: AdapterLayout, dtype: str, data: st.DataObject
) -> None:
    values = {n: v.clamp(-1e4, 1e4) for n, v in _adapter_values(data, layout).items()}
    payload = encode_adapter(layout, values, dtype=dtype)
    if where == "bytes":
        payload = mutate_bytes(data, payload)
    elif where == "declared-size":
        payload = redeclare(data, payload)
    else:  # corrupt only the counts and positions, right after the header
        header = len(MAGIC) + 1 + 32
        end = data.draw(st.integers(header + 1, max(header + 1, len(payload))))
        payload = payload[:header] + mutate_bytes(data, payload[header:end]) + payload[end:]
    job_dtype = data.draw(st.none() | st.just(dtype))
    result = accept_or_reject(lambda: decode_adapter(payload, layout, job_dtype), AdapterCodecError)
    if result is not None:
        _check_adapter_result(result, layout)


def _with_frame(layout: AdapterLayout, frame: bytes) -> bytes:
    """Every value claimed nonzero (float32), its high-byte plane ``frame``, the rest honest."""
    sections = _sections_all(layout)
    head = assemble("float32", bytes.fromhex(layout.digest), sections, torch.empty(0))
    return head + varint(len(frame)) + frame + bytes(3 * layout.num_values)


def test_adapter_decompression_bomb_is_refused_before_allocating_it() -> None:
    layout = LAYOUTS[0]
    # The measurement is real: an honest 16 MiB decompression peaks at 16 MiB or more.
    honest = rle_frame(16 * 2**20, 16 * 2**20)
    assert traced_peak(lambda: zstandard.ZstdDecompressor().decompress(honest)) >= 16 * 2**20

    bomb = rle_frame(GIB, GIB)  # 32 KiB that expand to, and declare, 1 GiB
    assert len(bomb) < 64 * 2**10
    errors: list[str] = []

    def decode(frame: bytes) -> None:
        payload = _with_frame(layout, frame)
        with pytest.raises(AdapterCodecError) as info:
            decode_adapter(payload, layout, max_bytes=len(payload))  # past the size bound
        errors.append(str(info.value))

    assert traced_peak(lambda: decode(bomb)) < 4 * 2**20
    assert str(GIB) in errors[-1] and "the counts say" in errors[-1]
    # Declaring nothing, or the honest size, does not help: nothing past it is made.
    assert traced_peak(lambda: decode(rle_frame(GIB, None))) < 4 * 2**20
    assert "does not declare" in errors[-1]
    assert traced_peak(lambda: decode(rle_frame(GIB, layout.num_values))) < 4 * 2**20
    assert "could not be decompressed" in errors[-1]
    # And with the default limit the 32 KiB bomb is already too big.
    with pytest.raises(AdapterCodecError, match="more than the limit"):
        decode_adapter(_with_frame(layout, bomb), layout)


# --------------------------------------------------------------------------- stored v2


@fuzz(100)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(sorted(VALUE_DTYPES)), data=st.data())
def test_stored_v2_decodes_as_v3_of_the_same_values(
    layout: AdapterLayout, dtype: str, data: st.DataObject
) -> None:
    values = {n: v.clamp(-6e4, 6e4) for n, v in _adapter_values(data, layout).items()}
    v2 = decode_adapter(encode_v2(layout, values, dtype), layout, dtype)
    v3 = decode_adapter(encode_adapter(layout, values, dtype), layout, dtype)
    _check_adapter_result(v2, layout)
    for name in layout.names:
        assert same_bits(v2[name], v3[name]), name


@pytest.mark.parametrize("where", ["frame", "declared-size", *SAFETENSORS_MUTATIONS])
@fuzz(60)
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(sorted(VALUE_DTYPES)), data=st.data())
def test_mutated_v2_payloads_only_raise_adapter_error(
    where: str, layout: AdapterLayout, dtype: str, data: st.DataObject
) -> None:
    values = {n: v.clamp(-1e4, 1e4) for n, v in _adapter_values(data, layout).items()}
    payload = encode_v2(layout, values, dtype)
    if where == "frame":
        payload = mutate_bytes(data, payload)
    elif where == "declared-size":
        payload = redeclare(data, payload)
    else:  # a lie inside the safetensors file, in an honest frame
        raw = zstandard.ZstdDecompressor().decompress(payload)
        payload = frame(mutate_safetensors(data, raw, where))
    job_dtype = data.draw(st.none() | st.just(dtype))
    result = accept_or_reject(lambda: decode_adapter(payload, layout, job_dtype), AdapterCodecError)
    if result is not None:
        _check_adapter_result(result, layout)


def test_v2_decompression_bomb_is_refused_before_allocating_it() -> None:
    layout = LAYOUTS[0]
    errors: list[str] = []

    def decode(payload: bytes) -> None:
        with pytest.raises(AdapterCodecError) as info:
            decode_adapter(payload, layout, max_bytes=len(payload))  # past the size bound
        errors.append(str(info.value))

    assert traced_peak(lambda: decode(rle_frame(GIB, GIB))) < 4 * 2**20
    assert f"declares {GIB} decompressed bytes" in errors[-1]
    assert traced_peak(lambda: decode(rle_frame(GIB, None))) < 4 * 2**20
    assert "does not declare" in errors[-1]
    assert traced_peak(lambda: decode(rle_frame(GIB, 64))) < 4 * 2**20  # it lies: more follow
    assert "could not be decompressed" in errors[-1]
