from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import torch

from fused.common.codecs.tensor_codec import (
    DEFAULT_ALLOWED_DTYPES,
    CodecError,
    TensorSpec,
    decode_tensors,
    encode_tensors,
    schema_of,
    state_dict_digest,
)


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "fc.weight": torch.randn(2, 5, generator=g).to(torch.bfloat16),
        "fc.half": torch.randn(3, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "ids": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "pixels": torch.arange(10, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def _craft(
    header: dict[str, Any] | str | bytes, data: bytes = b"", length: int | None = None
) -> bytes:
    """A safetensors payload from a hand-written header (dict, raw JSON text or raw bytes)."""
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(dtype: str, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


F32_TWO = struct.pack("<2f", 1.0, 2.0)  # 8 bytes


# --------------------------------------------------------------------- round trip


def test_round_trip_with_metadata() -> None:
    tensors = _sample()
    meta = {"model": "lenet", "version": "v1", "ünïcode": "✓"}
    data = encode_tensors(tensors, meta)
    out, out_meta = decode_tensors(data, schema=schema_of(tensors))
    assert out_meta == meta
    assert list(out) == sorted(tensors)
    for name, tensor in tensors.items():
        assert out[name].dtype == tensor.dtype
        assert out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor), name
    assert out["fc.weight"].dtype == torch.bfloat16
    assert state_dict_digest(out) == state_dict_digest(tensors)
    out["conv.weight"].add_(1)  # decoded tensors are writable and independent


def test_round_trip_without_metadata() -> None:
    out, meta = decode_tensors(encode_tensors({"w": torch.ones(2)}))
    assert meta == {}
    assert torch.equal(out["w"], torch.ones(2))
    assert decode_tensors(encode_tensors({})) == ({}, {})


def test_encoding_is_deterministic() -> None:
    tensors = _sample()
    reordered = dict(reversed(list(tensors.items())))
    reordered["conv.weight"] = (
        tensors["conv.weight"].permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    )
    assert not reordered["conv.weight"].is_contiguous()
    meta = {f"k{i}": str(i) for i in range(20)}
    a = encode_tensors(tensors, meta)
    b = encode_tensors(reordered, dict(reversed(list(meta.items()))))
    assert a == b
    assert encode_tensors(tensors) == encode_tensors(reordered)


def test_encode_handles_shared_storage() -> None:
    weight = torch.randn(3, 3)
    out, _ = decode_tensors(encode_tensors({"a": weight, "b": weight, "row": weight[1]}))
    assert torch.equal(out["a"], weight) and torch.equal(out["row"], weight[1])


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(CodecError, match="metadata"):
        encode_tensors({"w": torch.ones(1)}, {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(CodecError, match="reserved"):
        encode_tensors({"__metadata__": torch.ones(1)})
    with pytest.raises(CodecError, match="complex64"):
        encode_tensors({"c": torch.ones(2, dtype=torch.complex64)})


# --------------------------------------------------------------------- schema


def test_schema_of() -> None:
    schema = schema_of({"w": torch.zeros(2, 3), "n": torch.tensor(1)})
    assert schema == {
        "w": TensorSpec((2, 3), torch.float32),
        "n": TensorSpec((), torch.int64),
    }


def test_schema_name_mismatch_message() -> None:
    data = encode_tensors({"a": torch.ones(1), "extra": torch.ones(1)})
    schema = {"a": TensorSpec((1,), torch.float32), "needed": TensorSpec((2,), torch.float32)}
    with pytest.raises(CodecError) as info:
        decode_tensors(data, schema=schema)
    message = str(info.value)
    assert "missing ['needed']" in message
    assert "unexpected ['extra']" in message


def test_schema_shape_mismatch_message() -> None:
    data = encode_tensors({"w": torch.ones(2, 3)})
    with pytest.raises(CodecError, match=r"'w': expected shape \[3, 2\], got \[2, 3\]"):
        decode_tensors(data, schema={"w": TensorSpec((3, 2), torch.float32)})


def test_schema_dtype_mismatch_message() -> None:
    data = encode_tensors({"w": torch.ones(2, dtype=torch.float16)})
    with pytest.raises(CodecError, match="'w': expected dtype float32, got float16"):
        decode_tensors(data, schema={"w": TensorSpec((2,), torch.float32)})


def test_allowed_dtypes_parameter() -> None:
    data = encode_tensors({"w": torch.ones(2, dtype=torch.int8)})
    with pytest.raises(CodecError, match="'w': dtype int8 is not allowed"):
        decode_tensors(data)
    out, _ = decode_tensors(data, allowed_dtypes=DEFAULT_ALLOWED_DTYPES | {torch.int8})
    assert out["w"].dtype == torch.int8


# --------------------------------------------------------------------- malformed payloads

_VALID_HEADER = {"w": _entry("F32", [2], 0, 8)}

MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "truncated"),
    ("shorter than length field", b"\x08\x00\x00", "truncated"),
    ("header length too large", _craft(_VALID_HEADER, F32_TWO, length=2**40), "exceeds the limit"),
    ("header length past the end", _craft(_VALID_HEADER, F32_TWO, length=10_000), "exceeds the"),
    ("zero header length", _craft(b"", F32_TWO), "empty"),
    ("header not JSON", _craft("this is not json", F32_TWO), "not valid JSON"),
    ("header not UTF-8", _craft(b'{"\xff\xfe": 1}', F32_TWO), "UTF-8"),
    ("header not an object", _craft("[1, 2, 3]"), "must be a JSON object"),
    ("NaN constant in header", _craft('{"w": NaN}'), "NaN"),
    (
        "duplicate tensor names",
        _craft(
            '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            F32_TWO,
        ),
        "duplicate key 'w'",
    ),
    (
        "duplicate keys inside an entry",
        _craft('{"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', F32_TWO),
        "duplicate key 'dtype'",
    ),
    ("unknown dtype", _craft({"w": _entry("F128", [2], 0, 8)}, F32_TWO), "unknown dtype 'F128'"),
    ("dtype not a string", _craft({"w": _entry(4, [2], 0, 8)}, F32_TWO), "unknown dtype"),  # type: ignore[arg-type]
    (
        "known dtype not allowed",
        _craft({"w": _entry("I16", [4], 0, 8)}, F32_TWO),
        "'w': dtype int16 is not allowed",
    ),
    ("entry not an object", _craft({"w": [0, 8]}, F32_TWO), "'w': entry must be an object"),
    (
        "entry with extra key",
        _craft({"w": {**_entry("F32", [2], 0, 8), "extra": 1}}, F32_TWO),
        "unexpected \\['extra'\\]",
    ),
    (
        "entry missing data_offsets",
        _craft({"w": {"dtype": "F32", "shape": [2]}}, F32_TWO),
        "missing \\['data_offsets'\\]",
    ),
    ("negative shape", _craft({"w": _entry("F32", [-2], 0, 8)}, F32_TWO), "non-negative"),
    ("boolean in shape", _craft({"w": _entry("F32", [True, 2], 0, 8)}, F32_TWO), "non-negative"),
    ("float offsets", _craft({"w": _entry("F32", [2], 0.0, 8)}, F32_TWO), "two integers"),
    (
        "offsets out of range",
        _craft({"w": _entry("F32", [4], 0, 16)}, F32_TWO),
        "'w': data_offsets \\[0, 16\\] out of range",
    ),
    (
        "reversed offsets",
        _craft({"w": _entry("F32", [0], 8, 0)}, F32_TWO),
        "out of range",
    ),
    (
        "overlapping offsets",
        _craft({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)}, F32_TWO),
        "'b': data_offsets \\[4, 8\\] overlap",
    ),
    (
        "gap between tensors",
        _craft(
            {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, F32_TWO + F32_TWO[:4]
        ),
        "'b': data_offsets \\[8, 12\\] leave a gap of 4 bytes",
    ),
    (
        "trailing bytes not covered",
        _craft({"w": _entry("F32", [2], 0, 8)}, F32_TWO + b"\x00" * 4),
        "cover 8 bytes but the data buffer holds 12",
    ),
    (
        "truncated data",
        _craft({"w": _entry("F32", [2], 0, 8)}, F32_TWO[:6]),
        "out of range",
    ),
    (
        "shape and byte length disagree",
        _craft({"w": _entry("F32", [3], 0, 8)}, F32_TWO),
        "'w': shape \\[3\\] of F32 needs 12 bytes, data_offsets \\[0, 8\\] give 8",
    ),
    (
        "NaN value",
        _craft({"w": _entry("F32", [2], 0, 8)}, struct.pack("<2f", 1.0, float("nan"))),
        "'w': 1 of 2 values are not finite",
    ),
    (
        "Inf value",
        _craft({"w": _entry("F64", [1], 0, 8)}, struct.pack("<d", float("-inf"))),
        "'w': 1 of 1 values are not finite",
    ),
    (
        "Inf in bfloat16",
        _craft({"w": _entry("BF16", [2], 0, 4)}, b"\x80\x7f\x00\x00"),
        "'w'.*not finite",
    ),
    (
        "non-string metadata value",
        _craft({"__metadata__": {"epoch": 3}, **_VALID_HEADER}, F32_TWO),
        "metadata value for 'epoch' must be a string, got int",
    ),
    (
        "metadata not an object",
        _craft({"__metadata__": "text", **_VALID_HEADER}, F32_TWO),
        "__metadata__ must be an object",
    ),
]


@pytest.mark.parametrize(
    ("payload", "message"),
    [pytest.param(p, m, id=name) for name, p, m in MALFORMED],
)
def test_malformed_payloads_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_tensors(payload)


def test_craft_helper_builds_valid_payloads() -> None:
    """The malformed cases differ from this valid payload only in the defect they name."""
    out, meta = decode_tensors(_craft({"__metadata__": {"a": "b"}, **_VALID_HEADER}, F32_TWO))
    assert torch.equal(out["w"], torch.tensor([1.0, 2.0]))
    assert meta == {"a": "b"}


def test_oversized_payload_rejected() -> None:
    data = encode_tensors({"w": torch.zeros(1000)})
    with pytest.raises(
        CodecError, match=f"payload is {len(data)} bytes, more than the limit of 1000"
    ):
        decode_tensors(data, max_bytes=1000)
    decode_tensors(data, max_bytes=len(data))


def test_codec_error_is_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_every_single_byte_truncation_rejected() -> None:
    data = encode_tensors({"a": torch.ones(3), "b": torch.arange(4)}, {"m": "x"})
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_tensors(data[:cut])


# --------------------------------------------------------------------- digest


def test_state_dict_digest() -> None:
    tensors = _sample()
    base = state_dict_digest(tensors)
    assert len(base) == 64
    reordered = dict(reversed(list(tensors.items())))
    reordered["ids"] = tensors["ids"].t().contiguous().t()
    assert state_dict_digest(reordered) == base

    def changed(**update: torch.Tensor) -> str:
        return state_dict_digest({**tensors, **update})

    w = tensors["conv.weight"]
    assert changed(**{"conv.weight": w.reshape(4, 9)}) != base  # same bytes, other shape
    assert changed(**{"conv.weight": w.view(torch.int32)}) != base  # same bytes, other dtype
    bumped = w.clone()
    bumped.view(-1)[0] = torch.nextafter(bumped.view(-1)[0], torch.tensor(10.0))
    assert changed(**{"conv.weight": bumped}) != base  # one ulp
    renamed = dict(tensors)
    renamed["conv.weight2"] = renamed.pop("conv.weight")
    assert state_dict_digest(renamed) != base
    assert state_dict_digest({"z": torch.tensor([0.0])}) != state_dict_digest(
        {"z": torch.tensor([-0.0])}
    )
    assert state_dict_digest({}) != state_dict_digest({"e": torch.zeros(0)})
