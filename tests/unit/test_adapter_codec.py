"""The adapter wire format: values only, in mask order; strict, bounded decoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import zstandard

from fused.common.codecs.adapter_codec import (
    FORMAT,
    AdapterCodecError,
    decode_adapter,
    default_max_bytes,
    encode_adapter,
    max_content_bytes,
)
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.ml.adapters import AdapterLayout, build_layout

Tensors = dict[str, torch.Tensor]
LAYOUT = build_layout({"fc.weight": (20, 30), "conv.weight": (4, 2, 3, 3)}, 0.25, seed=3)


def _values(layout: AdapterLayout = LAYOUT, seed: int = 0) -> Tensors:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(layout.indices[n].numel(), generator=gen) for n in layout.names}


def _craft(tensors: Tensors, digest: str = LAYOUT.digest, fmt: str = FORMAT) -> bytes:
    raw = encode_tensors(tensors, {"format": fmt, "mask_digest": digest})
    return zstandard.ZstdCompressor(write_content_size=True).compress(raw)


def test_round_trip_carries_values_only_in_mask_order() -> None:
    values = _values()
    values["fc.weight"][::3] = 0.0  # zeros travel too: positions are never sent
    payload = encode_adapter(LAYOUT, values)
    decoded = decode_adapter(payload, LAYOUT)
    assert list(decoded) == list(LAYOUT.names)
    for name in LAYOUT.names:
        assert decoded[name].dtype == torch.float32
        assert torch.equal(decoded[name], values[name])
    tensors, meta = decode_tensors(zstandard.ZstdDecompressor().decompress(payload))
    assert set(tensors) == set(LAYOUT.names)  # no indices, no bitmaps
    assert meta == {"format": FORMAT, "mask_digest": LAYOUT.digest}


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_half_precision_uploads(dtype: str, tolerance: float) -> None:
    values = _values()
    payload = encode_adapter(LAYOUT, values, dtype=dtype)
    decoded = decode_adapter(payload, LAYOUT, dtype=dtype)
    for name in LAYOUT.names:
        torch.testing.assert_close(decoded[name], values[name], rtol=tolerance, atol=tolerance)
    assert len(payload) < len(encode_adapter(LAYOUT, values))
    with pytest.raises(AdapterCodecError, match="not the job's value dtype"):
        decode_adapter(payload, LAYOUT, dtype="float32")


def test_payload_is_values_plus_a_small_header() -> None:
    layout = build_layout({"w": (200, 1000)}, 0.05, seed=1)
    values = _values(layout)
    payload = encode_adapter(layout, values)
    assert len(payload) <= 4 * layout.num_values * 1.05 + 300
    assert len(payload) <= max_content_bytes(layout) <= default_max_bytes(layout)


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


def test_encode_rejects_unknown_dtype() -> None:
    with pytest.raises(AdapterCodecError, match="value dtype"):
        encode_adapter(LAYOUT, _values(), dtype="int8")


def _edit(change: Callable[[Tensors], object]) -> bytes:
    tensors = _values()
    change(tensors)
    return _craft(tensors)


def _bomb() -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(bytes(50 * 2**20))


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("not zstd", lambda: b"definitely not zstd", "not a zstd frame"),
    ("empty", lambda: b"", "not a zstd frame"),
    (
        "no content size",
        lambda: zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100),
        "does not declare its content size",
    ),
    ("bomb", _bomb, "decompression bomb"),
    ("truncated", lambda: encode_adapter(LAYOUT, _values())[:-5], "could not be decompressed"),
    (
        "two frames",
        lambda: encode_adapter(LAYOUT, _values()) + encode_adapter(LAYOUT, _values()),
        "could not be decompressed",
    ),
    (
        "not safetensors",
        lambda: zstandard.ZstdCompressor(write_content_size=True).compress(b"\x00" * 64),
        "adapter payload:",
    ),
    ("wrong digest", lambda: _craft(_values(), digest="0" * 64), "different mask"),
    ("wrong format", lambda: _craft(_values(), fmt="fused-adapter-v1"), "format"),
    (
        "missing tensor",
        lambda: _edit(lambda t: t.pop("conv.weight")),
        "missing \\['conv.weight'\\]",
    ),
    ("unexpected tensor", lambda: _edit(lambda t: t.update(extra=torch.ones(2))), "unexpected"),
    (
        "int values",
        lambda: _edit(lambda t: t.update({"fc.weight": t["fc.weight"].to(torch.int32)})),
        "dtype",
    ),
    ("short", lambda: _edit(lambda t: t.update({"fc.weight": t["fc.weight"][:-1]})), "expected"),
    (
        "2-D",
        lambda: _edit(lambda t: t.update({"fc.weight": t["fc.weight"].reshape(1, -1)})),
        "expected",
    ),
    ("nan", lambda: _edit(lambda t: t["fc.weight"].__setitem__(3, float("nan"))), "not finite"),
    ("inf", lambda: _edit(lambda t: t["conv.weight"].__setitem__(0, float("inf"))), "not finite"),
]


@pytest.mark.parametrize(
    ("payload", "match"), [(p, m) for _, p, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_payloads_are_rejected(payload: Callable[[], bytes], match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match):
        decode_adapter(payload(), LAYOUT)


def test_compressed_size_limit() -> None:
    payload = encode_adapter(LAYOUT, _values())
    with pytest.raises(AdapterCodecError, match="more than the limit"):
        decode_adapter(payload, LAYOUT, max_bytes=len(payload) - 1)


def test_non_bytes_rejected() -> None:
    with pytest.raises(AdapterCodecError, match="must be bytes"):
        decode_adapter("text", LAYOUT)  # type: ignore[arg-type]
