"""Reading the retired "fused-adapter-v2": adapter values a coordinator stored before the
upgrade to v3 still decode, with v2's checks; encoding is v3 only; the first bytes pick the
format and anything that is neither is refused."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch
import zstandard

from fused.common.codecs import adapter_codec, adapter_codec_v2
from fused.common.codecs.adapter_codec import (
    MAGIC,
    VALUE_DTYPES,
    AdapterCodecError,
    decode_adapter,
    encode_adapter,
)
from fused.common.ml.adapters import AdapterLayout, build_layout
from tests.unit.adapter_v2_payloads import encode_v2, frame, v2_content, v2_metadata
from tests.unit.fuzzing import rle_frame, same_bits

Tensors = dict[str, torch.Tensor]

# Written by the v2 encoder itself (9b26d9d^), kept as bytes: what a state directory holds.
OLD_LAYOUT = build_layout({"fc.weight": (4, 5), "bias": (6,)}, 0.5, seed=11)
OLD_VALUES = {
    "bias": [-0.5625, 0.0, 0.1875],
    "fc.weight": [-4.5, 0.0, -3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0, 3.75],
}
OLD_PAYLOADS = {
    "float32": "28b52ffd603c001d0700324e302b90a5cd01ffffbf39eeeef4cbf64302219287dea26fffbb6b8bb5"
    "d9c352c84233b3b55dbb0d66d6b58a390571fa63fce3f11baadf10ff46f557c75fc5bf42f803e21bc74f510e83"
    "0b6948bb0944440d00a0ca8b7290b6d8a1617ba9ad55c1cb71874e5827c00dd3e9e04edb91e445f18412b20a67"
    "652f7933616e3ab938844255326d2e4b53602bad308aecd7a67c90a38f492a5b647b15329622a2f90cd8967831"
    "525058d03bf5ecc2a496a072c3b7a585a232a3e1e7e9dbb32f959e87194f080b0043516dc526d82b09e1e183b0"
    "a363e4c5845b31fac8711c24eaee01b401",
    "bfloat16": "28b52ffd601e00a50600524d2e2aa0a56dffff074c55c12034fbfdffdfadd8f6ac594b9b4d4aeb07"
    "cf17db5b2222a1952ecb9be9a382d801518a311e877b880af71e372a751302a2520ac73439cc2d8834ab4840f4"
    "00e0795e93031743345c2dadff0b5e8e43b4a2f262d80604b8612a2158af0d4d5e133b9c903df4672f799e30e7"
    "6e2e0ea1cf4fa6f9b23405b6d20aa3cc7ecde77b1c7d4cf26c99ed3d642a4d402e096a47bc18313030a895dadb"
    "e0b4163c376c3b622c9e1b0d4bd9b6bd2d8da4e4865a080800cc044340af1960c09e278f4cd823c71191a80b07"
    "8005",
}
LAYOUT = build_layout({"fc.weight": (20, 30), "conv.weight": (4, 2, 3, 3)}, 0.25, seed=3)
V2_ERROR = r"^adapter payload \(fused-adapter-v2\): "


def _old_values() -> Tensors:
    return {n: torch.tensor(v) for n, v in OLD_VALUES.items()}


def _values(layout: AdapterLayout = LAYOUT, seed: int = 0) -> Tensors:
    """Random values, a third of them zero and one -0.0: every kind v3 codes differently."""
    gen = torch.Generator().manual_seed(seed)
    values = {n: torch.randn(layout.indices[n].numel(), generator=gen) for n in layout.names}
    for vector in values.values():
        vector[::3] = 0.0
        vector[1] = -0.0
    return values


def _assert_same(a: Tensors, b: Tensors) -> None:
    assert list(a) == list(b)
    for name in a:
        assert same_bits(a[name], b[name]), name


@pytest.mark.parametrize("dtype", sorted(OLD_PAYLOADS))
def test_payloads_the_v2_encoder_wrote_still_decode(dtype: str) -> None:
    payload = bytes.fromhex(OLD_PAYLOADS[dtype])
    decoded = decode_adapter(payload, OLD_LAYOUT, dtype=dtype)
    _assert_same(decoded, _old_values())
    v3 = encode_adapter(OLD_LAYOUT, _old_values(), dtype=dtype)
    _assert_same(decoded, decode_adapter(v3, OLD_LAYOUT, dtype=dtype))
    # The test-only writer lays out v2 exactly as the old encoder did.
    tensors = {n: v.to(VALUE_DTYPES[dtype]) for n, v in _old_values().items()}
    raw = zstandard.ZstdDecompressor().decompress(payload)
    assert raw == v2_content(tensors, v2_metadata(OLD_LAYOUT))


@pytest.mark.parametrize("dtype", sorted(VALUE_DTYPES))
def test_v2_and_v3_of_the_same_values_decode_alike(dtype: str) -> None:
    values = _values()
    v2, v3 = encode_v2(LAYOUT, values, dtype), encode_adapter(LAYOUT, values, dtype)
    _assert_same(decode_adapter(v2, LAYOUT, dtype), decode_adapter(v3, LAYOUT, dtype))
    _assert_same(decode_adapter(v2, LAYOUT), decode_adapter(v3, LAYOUT))


def test_stored_float32_values_decode_as_a_participant_reads_them() -> None:
    """The coordinator stored its means as float32; participants ask for exactly that."""
    stored = encode_v2(LAYOUT, _values(), "float32")
    _assert_same(decode_adapter(stored, LAYOUT, dtype="float32"), _values())


@pytest.mark.parametrize("dtype", sorted(VALUE_DTYPES))
def test_encoding_writes_v3_only(dtype: str) -> None:
    payload = encode_adapter(LAYOUT, _values(), dtype)
    assert payload.startswith(MAGIC)
    assert not adapter_codec_v2.is_v2(payload)


# --------------------------------------------------------------------------- hostile v2


def _tensors(**changes: torch.Tensor | None) -> Tensors:
    """The honest float32 tensors of LAYOUT, with some replaced (or dropped: None)."""
    tensors = dict(_values())
    for name, tensor in changes.items():
        name = name.replace("_", ".")
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    return tensors


def _v2(metadata: dict[str, str] | None = None, **changes: torch.Tensor | None) -> bytes:
    meta = v2_metadata(LAYOUT) if metadata is None else metadata
    return frame(v2_content(_tensors(**changes), meta))


def _with_bad(value: float) -> torch.Tensor:
    vector = _values()["fc.weight"].clone()
    vector[4] = value
    return vector


M_FC = int(LAYOUT.indices["fc.weight"].numel())
BOMB = 16 * 2**20  # in 512 bytes of RLE blocks: within the size limit, far above the content
HONEST = v2_content(_tensors(), v2_metadata(LAYOUT))
MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("magic only", lambda: adapter_codec_v2.ZSTD_MAGIC, "not a zstd frame"),
    (
        "no content size",
        lambda: zstandard.ZstdCompressor(write_content_size=False).compress(HONEST),
        "does not declare its content size",
    ),
    ("empty frame", lambda: frame(b""), "does not declare its content size"),
    ("bomb", lambda: rle_frame(BOMB, BOMB), f"declares {BOMB} decompressed bytes, more than"),
    ("two frames", lambda: frame(HONEST) + frame(HONEST), "more than one frame"),
    ("trailing byte", lambda: frame(HONEST) + b"\0", "unused data"),
    ("truncated", lambda: frame(HONEST)[:-3], "did not decompress full frame"),
    ("not safetensors", lambda: frame(bytes(500)), "header is empty"),
    ("v3 in a frame", lambda: frame(encode_adapter(LAYOUT, _values())), "header length"),
    ("no metadata", lambda: _v2({}), "format is None, expected 'fused-adapter-v2'"),
    (
        "format",
        lambda: _v2({**v2_metadata(LAYOUT), "format": "fused-adapter-v3"}),
        "format is 'fused-adapter-v3'",
    ),
    ("extra metadata", lambda: _v2({**v2_metadata(LAYOUT), "n": "1"}), r"keys \['n'\]"),
    ("wrong digest", lambda: _v2({**v2_metadata(LAYOUT), "mask_digest": "0" * 64}), "mask"),
    ("missing", lambda: _v2(conv_weight=None), r"missing \['conv.weight'\]"),
    ("unexpected", lambda: _v2(backdoor=torch.ones(3)), r"unexpected \['backdoor'\]"),
    ("2-D", lambda: _v2(fc_weight=torch.ones(M_FC, 1)), f"got shape \\[{M_FC}, 1\\]"),
    ("short", lambda: _v2(fc_weight=torch.ones(M_FC - 1)), f"expected {M_FC} values"),
    ("float64", lambda: _v2(fc_weight=torch.ones(3).double()), "float64 is not allowed"),
    ("nan", lambda: _v2(fc_weight=_with_bad(float("nan"))), "'fc.weight': 1 of .* not finite"),
    ("inf", lambda: _v2(fc_weight=_with_bad(float("-inf"))), "'fc.weight': 1 of .* not finite"),
    ("job dtype", lambda: _v2(fc_weight=torch.ones(M_FC).half()), "not the job's value dtype"),
]


@pytest.mark.parametrize(
    ("payload", "match"), [(p, m) for _, p, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_v2_payloads_are_refused(payload: Callable[[], bytes], match: str) -> None:
    with pytest.raises(AdapterCodecError, match=match) as info:
        decode_adapter(payload(), LAYOUT, dtype="float32")
    assert info.match(V2_ERROR)


def test_v2_is_held_to_its_own_size_limit() -> None:
    """v2 spelled out every name and value: a stored payload may exceed v3's bound."""
    name = "".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(40))
    layout = build_layout({name: (10, 10)}, 0.5, seed=1)
    payload = encode_v2(layout, _values(layout))
    assert len(payload) > adapter_codec.default_max_bytes(layout)
    _assert_same(decode_adapter(payload, layout), _values(layout))
    with pytest.raises(AdapterCodecError, match=V2_ERROR + ".*more than the limit"):
        decode_adapter(payload, layout, max_bytes=len(payload) - 1)
    with pytest.raises(AdapterCodecError, match=V2_ERROR + ".*more than the limit"):
        decode_adapter(payload + bytes(adapter_codec_v2.default_max_bytes(layout)), layout)


# --------------------------------------------------------------------------- detection

NEITHER: list[tuple[str, bytes]] = [
    ("v2's content, unframed", HONEST),
    ("a zstd skippable frame", b"\x50\x2a\x4d\x18" + bytes(8)),
    ("another magic", b"FAv2" + bytes(40)),
    ("text", b'{"format": "fused-adapter-v2"}'),
]


@pytest.mark.parametrize(("_", "payload"), NEITHER, ids=[n for n, _ in NEITHER])
def test_payloads_that_are_neither_format_are_refused(_: str, payload: bytes) -> None:
    match = r"not a fused-adapter-v3 payload, nor a stored fused-adapter-v2 one"
    with pytest.raises(AdapterCodecError, match=match):
        decode_adapter(payload, LAYOUT)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_a_payload_too_short_for_either_magic_is_truncated(size: int) -> None:
    with pytest.raises(AdapterCodecError, match="truncated in its magic"):
        decode_adapter(adapter_codec_v2.ZSTD_MAGIC[:size], LAYOUT)
