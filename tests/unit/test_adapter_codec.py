"""The adapter wire format: nonzero values in mask order, their places only when some are zero;
strict, bounded decoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import zstandard

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

Tensors = dict[str, torch.Tensor]
LAYOUT = build_layout({"fc.weight": (20, 30), "conv.weight": (4, 2, 3, 3)}, 0.25, seed=3)
HEADER = len(MAGIC) + 1 + 32  # magic, dtype, mask digest


def _values(layout: AdapterLayout = LAYOUT, seed: int = 0, scale: float = 1.0) -> Tensors:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(layout.indices[n].numel(), generator=gen) * scale for n in layout.names}


def _dead_rows(layout: AdapterLayout, values: Tensors, every: int) -> None:
    """Zero the values of every ``every``-th output unit, as a dead ReLU unit leaves them."""
    for name in layout.names:
        row = layout.indices[name] // (layout.numel(name) // layout.shapes[name][0])
        values[name][row % every == 0] = 0.0


def _nonzero(values: Tensors) -> int:
    return sum(int((v != 0).sum()) for v in values.values())


@pytest.mark.parametrize("zeros", ["none", "some", "most", "all"])
def test_round_trip_is_bit_exact(zeros: str) -> None:
    values = _values()
    fc = values["fc.weight"]
    if zeros == "some":
        fc[::3] = 0.0
        fc[1] = -0.0  # a value: only +0.0 travels as a position
    elif zeros == "most":
        fc[fc.abs() < 1.5] = 0.0
    elif zeros == "all":
        values = {n: torch.zeros_like(v) for n, v in values.items()}
    decoded = decode_adapter(encode_adapter(LAYOUT, values), LAYOUT)
    assert list(decoded) == list(LAYOUT.names)
    for name in LAYOUT.names:
        assert decoded[name].dtype == torch.float32
        assert torch.equal(decoded[name].view(torch.int32), values[name].view(torch.int32))


def test_an_all_zero_adapter_is_its_header_and_one_byte_a_tensor() -> None:
    zeros = {n: torch.zeros(LAYOUT.indices[n].numel()) for n in LAYOUT.names}
    payload = encode_adapter(LAYOUT, zeros)
    assert len(payload) == HEADER + len(LAYOUT.names)
    assert payload.startswith(MAGIC)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_half_precision_uploads(dtype: str, tolerance: float) -> None:
    values = _values()
    values["fc.weight"][::4] = 0.0
    payload = encode_adapter(LAYOUT, values, dtype=dtype)
    decoded = decode_adapter(payload, LAYOUT, dtype=dtype)
    for name in LAYOUT.names:
        torch.testing.assert_close(decoded[name], values[name], rtol=tolerance, atol=tolerance)
    assert len(payload) < len(encode_adapter(LAYOUT, values))
    with pytest.raises(AdapterCodecError, match="not the job's value dtype"):
        decode_adapter(payload, LAYOUT, dtype="float32")


@pytest.mark.parametrize("dtype", sorted(VALUE_DTYPES))
@pytest.mark.parametrize("every", [0, 7, 2])
def test_payload_is_at_most_its_nonzero_values(dtype: str, every: int) -> None:
    """The goal of the format: <= 1.05x the bytes of the nonzero values in the upload dtype,
    for trained-like values (small, few binades) with or without dead units."""
    layout = build_layout({"fc1.weight": (120, 400)}, 0.05, seed=1)
    values = _values(layout, scale=1e-3)
    if every:
        _dead_rows(layout, values, every)
    cast = {n: v.to(VALUE_DTYPES[dtype]) for n, v in values.items()}
    payload = encode_adapter(layout, values, dtype=dtype)
    assert len(payload) <= 1.05 * _nonzero(cast) * VALUE_DTYPES[dtype].itemsize
    assert len(payload) <= default_max_bytes(layout)


def test_zeros_cost_their_places_not_their_values() -> None:
    layout = build_layout({"w": (200, 1000)}, 0.05, seed=1)
    values = _values(layout)
    dense = len(encode_adapter(layout, values))
    values["w"][values["w"].abs() < 1.65] = 0.0  # about 90% zeros, at random places
    sparse = encode_adapter(layout, values)
    assert len(sparse) < 0.2 * dense


def test_honest_worst_case_fits_the_default_limit() -> None:
    """Incompressible values (every finite bit pattern), half of them zero at random."""
    layout = build_layout({"w": (300, 300), "b": (7,)}, 0.1, seed=2)
    gen = torch.Generator().manual_seed(0)
    for zero_share in (0.0, 0.01, 0.5):
        values = {}
        for name in layout.names:
            size = layout.indices[name].numel()
            bits = torch.randint(-(2**31), 2**31 - 1, (size,), generator=gen, dtype=torch.int32)
            vector = bits.view(torch.float32)
            vector = torch.where(torch.isfinite(vector), vector, torch.ones_like(vector))
            vector[torch.rand(size, generator=gen) < zero_share] = 0.0
            values[name] = vector
        assert len(encode_adapter(layout, values)) <= default_max_bytes(layout)


def test_deterministic_bytes() -> None:
    values = _values()
    assert encode_adapter(LAYOUT, values) == encode_adapter(LAYOUT, dict(reversed(values.items())))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"fc.weight": torch.zeros(1)}, "conv.weight"),
        (
            {
                **_values(),
                "fc.weight": torch.full((LAYOUT.indices["fc.weight"].numel(),), float("nan")),
            },
            "finite",
        ),
    ],
)
def test_encode_rejects_bad_values(values: Tensors, match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match):
        encode_adapter(LAYOUT, values)


def test_encode_rejects_unknown_dtype_and_overflow() -> None:
    with pytest.raises(AdapterCodecError, match="value dtype"):
        encode_adapter(LAYOUT, _values(), dtype="int8")
    with pytest.raises(AdapterCodecError, match="not all finite in float16"):
        encode_adapter(LAYOUT, _values(scale=1e6), dtype="float16")


# --------------------------------------------------------------------------- hostile payloads

FC, CONV = "fc.weight", "conv.weight"
M = {n: int(LAYOUT.indices[n].numel()) for n in LAYOUT.names}
DIGEST = bytes.fromhex(LAYOUT.digest)


def _all(
    values: torch.Tensor | None = None, digest: bytes = DIGEST, dtype: str = "float32"
) -> bytes:
    """Every value of every tensor nonzero (no positions)."""
    joined = torch.ones(sum(M.values())) if values is None else values
    sections = [Section(M[n]) for n in LAYOUT.names]
    return assemble(dtype, digest, sections, joined.to(VALUE_DTYPES[dtype]))


def _with_places(places: list[int], listed: list[int] | None = None, crc: int = 0) -> bytes:
    """conv.weight holds nonzero values at ``places``; its positions list ``listed`` (default:
    the same), with ``crc`` xored into their checksum's last byte."""
    positions = encode_positions(torch.tensor(places if listed is None else listed), M[CONV])
    positions = positions[:-1] + bytes([positions[-1] ^ crc])
    sections = [Section(len(places), positions), Section(M[FC])]
    return assemble("float32", DIGEST, sections, torch.ones(len(places) + M[FC]))


def _frame_swapped(frame: bytes) -> bytes:
    """A payload whose high-byte frame is replaced, everything else honest."""
    honest = _all()
    k = sum(M.values())
    head = HEADER + sum(len(varint(M[n])) for n in LAYOUT.names)
    old = zstandard.ZstdCompressor(write_content_size=True, write_checksum=False).compress(
        torch.ones(k).view(torch.uint8)[3::4].numpy().tobytes()
    )
    assert honest[head + 1 : head + 1 + len(old)] == old  # the layout is as documented
    return honest[:head] + bytes([len(frame)]) + frame + honest[head + 1 + len(old) :]


def _edit(payload: bytes, at: int, byte: int) -> bytes:
    return payload[:at] + bytes([byte]) + payload[at + 1 :]


def _values_with(position: int, value: float) -> torch.Tensor:
    joined = torch.ones(sum(M.values()))
    joined[position] = value
    return joined


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "truncated in its magic"),
    ("neither v3 nor v2", lambda: b"FAv2" + _all()[4:], "not a fused-adapter-v3 payload, nor"),
    ("dtype code", lambda: _edit(_all(), len(MAGIC), 9), "unknown value dtype code 9"),
    ("wrong digest", lambda: _all(digest=bytes(32)), "different mask"),
    ("short digest", lambda: _all()[: HEADER - 1], "truncated in its mask digest"),
    ("count over mask", lambda: _edit(_all(), HEADER, M[CONV] + 1), "more than its"),
    ("count not canonical", lambda: _all()[:HEADER] + b"\x80\x00", "not a canonical varint"),
    ("count endless", lambda: _all()[:HEADER] + b"\xff" * 11, "longer than 10 bytes"),
    ("positions cut", lambda: _with_places([0, 5])[:-50], "truncated"),
    ("positions corrupt", lambda: _with_places([0, 5], crc=1), "'conv.weight': .*CRC-32"),
    ("positions short", lambda: _with_places([0, 5], [5]), "1 positions, its count 2"),
    ("lists the commoner", lambda: _with_places(list(range(1, M[CONV]))), "max_count=1"),
    ("frame cut", lambda: _all()[:-1], "low bytes"),
    ("trailing", lambda: _all() + b"\0", "1 trailing bytes"),
    ("frame not zstd", lambda: _frame_swapped(b"not zstd"), "not a zstd frame"),
    ("frame lies", lambda: _frame_swapped(zstandard.compress(b"\x3f" * 5)), "the counts say"),
    ("frame bomb", lambda: _frame_swapped(zstandard.compress(bytes(2**20))[:120]), "counts say"),
    ("zero value", lambda: _all(_values_with(3, 0.0)), "is \\+0.0"),
    ("nan", lambda: _all(_values_with(M[CONV] + 2, float("nan"))), "'fc.weight'.*not finite"),
    ("inf", lambda: _all(_values_with(0, float("inf"))), "'conv.weight'.*not finite"),
    ("dtype", lambda: _all(dtype="float16"), "not the job's value dtype"),
]


@pytest.mark.parametrize(
    ("payload", "match"), [(p, m) for _, p, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_payloads_are_rejected(payload: Callable[[], bytes], match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match):
        decode_adapter(payload(), LAYOUT, dtype="float32")


def test_crafted_honest_payloads_decode() -> None:
    """The hostile builders start from payloads the decoder accepts."""
    assert _nonzero(decode_adapter(_all(), LAYOUT)) == sum(M.values())
    decoded = decode_adapter(_with_places([0, 5]), LAYOUT)
    assert decoded[CONV].nonzero().flatten().tolist() == [0, 5]


def test_size_limit() -> None:
    payload = encode_adapter(LAYOUT, _values())
    with pytest.raises(AdapterCodecError, match="more than the limit"):
        decode_adapter(payload, LAYOUT, max_bytes=len(payload) - 1)
    with pytest.raises(AdapterCodecError, match="more than the limit"):
        decode_adapter(payload + bytes(default_max_bytes(LAYOUT)), LAYOUT)


def test_non_bytes_rejected() -> None:
    with pytest.raises(AdapterCodecError, match="must be bytes"):
        decode_adapter("text", LAYOUT)  # type: ignore[arg-type]
