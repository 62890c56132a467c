from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import zstandard

from common.adapter_codec import (
    FORMAT,
    AdapterCodecError,
    decode_adapter,
    default_max_bytes,
    encode_adapter,
    max_content_bytes,
)
from common.adapters import AdapterLayout, build_layout
from common.tensor_codec import decode_tensors, encode_tensors

Tensors = dict[str, torch.Tensor]

LAYOUT = build_layout({"fc.weight": (20, 30), "conv.weight": (4, 2, 3, 3)}, 0.25, seed=3)


def _values(layout: AdapterLayout, seed: int = 0, zero_every: int = 0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    out = {n: torch.randn(layout.indices[n].numel(), generator=g) for n in layout.names}
    if zero_every:
        for v in out.values():
            v[::zero_every] = 0.0
    return out


def _compress(raw: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(raw)


def _wire_tensors(layout: AdapterLayout, values: Tensors) -> Tensors:
    """The tensors an honest payload carries (all positions, since test values are nonzero)."""
    out: Tensors = {}
    for n in layout.names:
        out[f"{n}::indices"] = layout.indices[n].clone()
        out[f"{n}::values"] = values[n].clone()
    return out


def _craft(tensors: Tensors, digest: str = LAYOUT.digest, fmt: str = FORMAT) -> bytes:
    return _compress(encode_tensors(tensors, {"format": fmt, "mask_digest": digest}))


# --------------------------------------------------------------------- round trip


def test_round_trip_omits_zeros() -> None:
    values = _values(LAYOUT, zero_every=3)
    values["conv.weight"][1] = -0.0  # negative zero is a zero too
    payload = encode_adapter(LAYOUT, values)
    decoded = decode_adapter(payload, LAYOUT)
    assert sorted(decoded) == list(LAYOUT.names)
    for n in LAYOUT.names:
        assert decoded[n].dtype == torch.float32
        assert torch.equal(decoded[n], values[n])

    raw = zstandard.ZstdDecompressor().decompress(payload)
    tensors, meta = decode_tensors(raw)
    assert meta == {"format": FORMAT, "mask_digest": LAYOUT.digest}
    for n in LAYOUT.names:
        nonzero = values[n] != 0
        if f"{n}::indices" in tensors:
            assert torch.equal(tensors[f"{n}::indices"], LAYOUT.indices[n][nonzero])
        else:  # a presence bitmap over the mask, whichever is smaller
            bits = np.unpackbits(tensors[f"{n}::present"].numpy(), bitorder="little")
            assert torch.equal(torch.from_numpy(bits[: nonzero.numel()].astype(bool)), nonzero)
        assert torch.equal(tensors[f"{n}::values"], values[n][nonzero])
    assert zstandard.get_frame_parameters(payload).content_size == len(raw)


def test_zero_adapter_and_determinism() -> None:
    zeros = {n: torch.zeros(LAYOUT.indices[n].numel()) for n in LAYOUT.names}
    decoded = decode_adapter(encode_adapter(LAYOUT, zeros), LAYOUT)
    assert all(not decoded[n].any() for n in LAYOUT.names)
    values = _values(LAYOUT)
    assert encode_adapter(LAYOUT, values) == encode_adapter(LAYOUT, dict(reversed(values.items())))


def test_float64_values_are_sent_as_float32() -> None:
    values = {n: v.double() for n, v in _values(LAYOUT).items()}
    decoded = decode_adapter(encode_adapter(LAYOUT, values), LAYOUT)
    assert all(torch.equal(decoded[n], values[n].float()) for n in LAYOUT.names)


def test_honest_worst_case_fits_the_bounds() -> None:
    layout = build_layout({'blk."ü".weight': (64, 64), "x": (1,)}, 1.0, seed=0)
    values = _values(layout)
    payload = encode_adapter(layout, values, level=1)
    raw = zstandard.ZstdDecompressor().decompress(payload)
    assert len(raw) <= max_content_bytes(layout)
    assert len(payload) <= default_max_bytes(layout)
    assert decode_adapter(payload, layout)["x"].numel() == 1


def test_payload_size_is_lean() -> None:
    layout = build_layout({"fc.weight": (200, 1000)}, 0.05, seed=3)
    n = layout.num_values
    assert 9_000 < n < 11_000
    payload = encode_adapter(layout, _values(layout))
    dense = 4 * 200 * 1000
    # float32 values (4 bytes) plus compressed sorted positions (about 2 bytes each).
    assert len(payload) < 1.3 * 5 * n
    assert len(payload) < 0.1 * dense


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"fc.weight": torch.zeros(1)}, "missing"),
        ({**_values(LAYOUT), "fc.weight": torch.zeros(3)}, "expected shape"),
        ({**_values(LAYOUT), "extra": torch.zeros(1)}, "unexpected"),
        (
            {
                **_values(LAYOUT),
                "fc.weight": torch.full((LAYOUT.indices["fc.weight"].numel(),), float("nan")),
            },
            "finite",
        ),
    ],
)
def test_encode_rejects_bad_values(values: Tensors, match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match):
        encode_adapter(LAYOUT, values)


# --------------------------------------------------------------------- malformed payloads


def _edit(change: Callable[[Tensors], object]) -> bytes:
    tensors = _wire_tensors(LAYOUT, _values(LAYOUT))
    change(tensors)
    return _craft(tensors)


def _set(key: str, tensor: torch.Tensor) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        t[key] = tensor

    return change


def _poke(key: str, pos: int, value: float) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        t[key][pos] = value

    return change


FC_IDX = LAYOUT.indices["fc.weight"]
FC_N = FC_IDX.numel()
NOT_IN_MASK = next(i for i in range(600) if i not in set(FC_IDX.tolist()))


def _not_in_mask() -> bytes:
    tensors = _wire_tensors(LAYOUT, _values(LAYOUT))
    tensors["fc.weight::indices"] = torch.tensor([NOT_IN_MASK])
    tensors["fc.weight::values"] = torch.tensor([1.0])
    return _craft(tensors)


HONEST = encode_adapter(LAYOUT, _values(LAYOUT))
OTHER = build_layout({"fc.weight": (20, 30), "conv.weight": (4, 2, 3, 3)}, 0.25, seed=4)

MALFORMED: list[tuple[str, bytes, str]] = [
    ("not_zstd", b"definitely not a zstd frame", "not a zstd frame"),
    ("empty", b"", "not a zstd frame"),
    (
        "no_content_size",
        _compress(zstandard.ZstdDecompressor().decompress(HONEST), False),
        "does not declare its content size",
    ),
    ("bomb", _compress(b"\0" * 50_000_000), "decompression bomb"),
    ("truncated", HONEST[:-7], "could not be decompressed"),
    ("two_frames", HONEST + HONEST, "could not be decompressed"),
    ("not_safetensors", _compress(b"\x10" + b"\0" * 100), "adapter payload: header"),
    ("wrong_digest", encode_adapter(OTHER, _values(OTHER)), "different mask"),
    ("wrong_format", _craft(_wire_tensors(LAYOUT, _values(LAYOUT)), fmt="v0"), "format"),
    ("missing", _edit(lambda t: t.pop("conv.weight::values")), r"missing \['conv.weight::values"),
    ("unexpected", _edit(_set("extra", torch.zeros(1))), r"unexpected \['extra'\]"),
    ("dtype_int32", _edit(_set("fc.weight::indices", FC_IDX.int())), "int32 is not allowed"),
    (
        "dtype_float_indices",
        _edit(_set("fc.weight::indices", FC_IDX.float())),
        "expected dtype torch.int64",
    ),
    ("indices_2d", _edit(_set("fc.weight::indices", FC_IDX.view(1, -1))), "expected 1-D"),
    ("length_mismatch", _edit(_set("fc.weight::values", torch.ones(FC_N - 1))), "lengths"),
    ("unsorted", _edit(_set("fc.weight::indices", FC_IDX.flip(0))), "strictly increasing"),
    ("duplicate", _edit(_poke("fc.weight::indices", 1, int(FC_IDX[0]))), "duplicate index"),
    ("out_of_range", _edit(_poke("fc.weight::indices", FC_N - 1, 600)), "out of range"),
    ("negative", _edit(_poke("fc.weight::indices", 0, -1)), "out of range"),
    (
        "not_in_mask",
        _not_in_mask(),
        f"index {NOT_IN_MASK} at position 0 is not in the adapter mask",
    ),
    ("nan", _edit(_poke("fc.weight::values", 2, float("nan"))), "not finite"),
    ("inf", _edit(_poke("fc.weight::values", 2, float("inf"))), "not finite"),
    ("explicit_zero", _edit(_poke("fc.weight::values", 4, 0.0)), "explicit zero at position 4"),
]


@pytest.mark.parametrize(
    ("payload", "match"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_payloads_are_rejected(payload: bytes, match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match):
        decode_adapter(payload, LAYOUT)


def test_compressed_size_limit() -> None:
    with pytest.raises(AdapterCodecError, match="more than the limit of 100"):
        decode_adapter(HONEST, LAYOUT, max_bytes=100)
    assert decode_adapter(HONEST, LAYOUT, max_bytes=len(HONEST))


def test_non_bytes_rejected() -> None:
    with pytest.raises(AdapterCodecError, match="must be bytes"):
        decode_adapter("text", LAYOUT)  # type: ignore[arg-type]


def test_dense_values_travel_without_indices() -> None:
    """When every masked position is nonzero, positions are implied by the mask."""
    import safetensors.torch
    import zstandard

    from common.adapters import build_layout

    layout = build_layout({"w": (100, 100)}, 0.1, seed=3)
    values = {"w": torch.linspace(0.5, 1.5, layout.num_values)}
    payload = encode_adapter(layout, values)
    inner = safetensors.torch.load(zstandard.ZstdDecompressor().decompress(payload))
    assert set(inner) == {"w::values"}
    assert torch.equal(decode_adapter(payload, layout)["w"], values["w"])
    sparse = dict(values)
    sparse["w"] = values["w"].clone()
    sparse["w"][0] = 0.0
    assert len(encode_adapter(layout, sparse)) > len(payload)


def test_values_without_indices_must_cover_the_mask() -> None:
    import zstandard

    from common.adapters import build_layout
    from common.tensor_codec import encode_tensors

    layout = build_layout({"w": (100, 100)}, 0.1, seed=3)
    raw = encode_tensors(
        {"w::values": torch.ones(layout.num_values - 1)},
        {"format": "fused-adapter-v1", "mask_digest": layout.digest},
    )
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    with pytest.raises(AdapterCodecError, match="without indices"):
        decode_adapter(payload, layout)


def test_partly_zero_values_travel_with_a_presence_bitmap() -> None:
    import safetensors.torch
    import zstandard

    from common.adapters import build_layout

    layout = build_layout({"w": (100, 100)}, 0.1, seed=3)
    values = torch.linspace(0.5, 1.5, layout.num_values)
    values[::7] = 0.0  # e.g. weights of dead units that never got a gradient
    payload = encode_adapter(layout, {"w": values})
    inner = safetensors.torch.load(zstandard.ZstdDecompressor().decompress(payload))
    assert set(inner) == {"w::present", "w::values"}
    assert torch.equal(decode_adapter(payload, layout)["w"], values)


@pytest.mark.parametrize(
    ("present", "message"),
    [
        (lambda n: torch.zeros(n // 8, dtype=torch.uint8), "uint8 bitmap bytes"),
        (lambda n: torch.zeros((n + 7) // 8, dtype=torch.int64), "uint8 bitmap bytes"),
        (lambda n: torch.full(((n + 7) // 8,), 255, dtype=torch.uint8), "beyond the"),
    ],
)
def test_malformed_presence_bitmaps_are_rejected(
    present: Callable[[int], torch.Tensor], message: str
) -> None:
    import zstandard

    from common.adapters import build_layout
    from common.tensor_codec import encode_tensors

    layout = build_layout({"w": (100, 100)}, 0.1, seed=3)
    n = layout.num_values
    assert n % 8, "the padding case needs a mask size that is not a multiple of 8"
    raw = encode_tensors(
        {"w::present": present(n), "w::values": torch.ones(1)},
        {"format": "fused-adapter-v1", "mask_digest": layout.digest},
    )
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    with pytest.raises(AdapterCodecError, match=message):
        decode_adapter(payload, layout)
