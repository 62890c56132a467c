"""The portable adapter file: bit-exact round trips on real masks, reversible merging (-0.0
included), and one exact error message per malformed file, bad build and mismatched model.
The doc's snippet and size figures: test_adapter_file_doc.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import safetensors.torch
import torch

from fused.common.codecs.adapter_file import (
    FORMAT,
    AdapterFile,
    AdapterFileError,
    build_adapter_file,
    decode_adapter_file,
)
from fused.common.codecs.adapter_file_apply import apply_adapter_file, merge_into, unmerge
from fused.common.codecs.tensor_codec import encode_tensors, state_dict_digest
from fused.common.ml.adapters import build_layout, merge_weights
from fused.common.ml.models.lenet import LeNet5

Tensors = dict[str, torch.Tensor]
SHA_A, SHA_B = "a" * 64, "b" * 64
LENET_SHAPES = {n: tuple(t.shape) for n, t in LeNet5().state_dict().items()}


def _digest(state: Tensors) -> str:
    return state_dict_digest(state)


def lenet_case(
    dtype: torch.dtype, density: float, names: list[str] | None = None, seed: int = 0
) -> tuple[Tensors, Tensors]:
    """Random LeNet-shaped base weights and their merge with a real adapter mask."""
    gen = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=gen).to(dtype) for n, s in LENET_SHAPES.items()}
    layout = build_layout({n: LENET_SHAPES[n] for n in names or LENET_SHAPES}, density, seed)
    values = {n: torch.randn(layout.indices[n].numel(), generator=gen) for n in layout.names}
    return base, merge_weights(base, layout, values)


def _negative_zero_case() -> tuple[Tensors, Tensors]:
    """Base -0.0 under a zero adapter value: merged holds +0.0, a bitwise change."""
    layout = build_layout({"fc.weight": (8, 8)}, 0.5, seed=4)
    base = {"fc.weight": torch.full((8, 8), -0.0), "fc.bias": torch.ones(8)}
    values = {"fc.weight": torch.zeros(layout.indices["fc.weight"].numel())}
    values["fc.weight"][::2] = 1.5
    return base, merge_weights(base, layout, values)


def _gap_width_case(numel: int, changed: list[int]) -> tuple[Tensors, Tensors]:
    base = {"w": torch.zeros(numel), "b": torch.zeros(3)}
    merged = dict(base, w=base["w"].clone())
    merged["w"][changed] = 1.0
    return base, merged


ROUND_TRIPS: dict[str, Callable[[], tuple[Tensors, Tensors]]] = {
    "lenet-f32-all": lambda: lenet_case(torch.float32, 0.1),
    "lenet-f32-fc": lambda: lenet_case(torch.float32, 0.05, ["fc1.weight", "fc2.weight"]),
    "lenet-f16": lambda: lenet_case(torch.float16, 0.1, seed=1),
    "lenet-bf16": lambda: lenet_case(torch.bfloat16, 0.3, seed=2),
    "negative-zero": _negative_zero_case,
    "int16-gaps": lambda: _gap_width_case(5000, [3, 4000]),
    "int32-gaps": lambda: _gap_width_case(70000, [69999]),
    "nothing-changed": lambda: _gap_width_case(10, []),
}
GAP_DTYPE = {"int16-gaps": torch.int16, "int32-gaps": torch.int32, "lenet-f32-all": torch.uint8}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_round_trip_is_bit_exact_and_reversible(case: str) -> None:
    base, merged = ROUND_TRIPS[case]()
    before = _digest(base)
    data = build_adapter_file(base, merged, SHA_A, SHA_B, {"version": "v7", "layers": "fc"})
    f = decode_adapter_file(data)
    assert (f.base_sha256, f.model_sha256, dict(f.extra)) == (
        SHA_A,
        SHA_B,
        {"layers": "fc", "version": "v7"},
    )
    changed = {n for n in base if not torch.equal(base[n].view(-1), merged[n].view(-1))}
    assert set(f.patches) <= set(base) and changed <= set(f.patches)
    applied = apply_adapter_file(base, f)
    assert _digest(applied) == _digest(merged) and _digest(base) == before
    live = {n: t.clone() for n, t in base.items()}
    saved = merge_into(live, f)
    assert _digest(live) == _digest(merged)
    unmerge(live, saved)
    assert _digest(live) == before
    assert build_adapter_file(base, merged, SHA_A, SHA_B, {"layers": "fc", "version": "v7"}) == data
    if case in GAP_DTYPE:
        gaps, _ = _tensors_of(data)
        assert {t.dtype for t in gaps.values()} == {GAP_DTYPE[case]}


def _tensors_of(data: bytes) -> tuple[Tensors, Tensors]:
    loaded = safetensors.torch.load(data)
    gaps = {k: v for k, v in loaded.items() if k.endswith("::gaps")}
    return gaps, {k: v for k, v in loaded.items() if k.endswith("::values")}


def test_negative_zero_is_stored_and_restored() -> None:
    base, merged = _negative_zero_case()
    f = decode_adapter_file(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
    patch = f.patches["fc.weight"]
    assert set(f.patches) == {"fc.weight"} and bool((patch.values == 0).any())
    sign = torch.signbit(patch.values[patch.values == 0])
    assert not bool(sign.any())  # +0.0 replaces -0.0
    live = {n: t.clone() for n, t in base.items()}
    saved = merge_into(live, f)
    unmerge(live, saved)
    assert bool(torch.signbit(live["fc.weight"]).all())  # every -0.0 is back


def test_live_module_merges_in_place_and_unmerges_exactly() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    layout = build_layout({"fc1.weight": (120, 256), "conv1.weight": (6, 1, 5, 5)}, 0.1, seed=9)
    values = {n: torch.randn(layout.indices[n].numel()) for n in layout.names}
    merged = merge_weights(base, layout, values)
    f = decode_adapter_file(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
    weight = model.fc1.weight
    saved = merge_into(model, f)
    assert model.fc1.weight is weight and weight.requires_grad
    assert _digest(model.state_dict()) == _digest(merged)
    unmerge(model, saved)
    assert _digest(model.state_dict()) == _digest(base)


def test_non_contiguous_and_tied_tensors() -> None:
    base_t = torch.randn(5, 4)
    merged_t = base_t.clone()
    merged_t.view(-1)[[0, 7, 19]] = 2.0
    base = {"a": base_t.t(), "b": base_t.t()}  # transposed: flat positions are row-major
    merged = {"a": merged_t.t(), "b": merged_t.t()}
    f = decode_adapter_file(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
    shared = base_t.clone()
    live = {"a": shared.t(), "b": shared.t()}  # one storage under two names
    saved = merge_into(live, f)
    assert torch.equal(live["a"], merged["a"])
    unmerge(live, saved)
    assert torch.equal(shared, base_t)


# --------------------------------------------------------------------------- malformed files


def _craft(tensors: Tensors | None = None, **meta: str | None) -> bytes:
    """A file with one tensor 'w' of shape [2, 3] changed at 1, 3, 6 ... unless overridden."""
    if tensors is None:
        tensors = {"w::gaps": torch.tensor([1, 2, 2], dtype=torch.uint8), "w::values": _v(3)}
    fields = {"format": FORMAT, "base_sha256": SHA_A, "model_sha256": SHA_B}
    fields["shapes"] = '{"w":[2,3]}'
    for key, value in meta.items():
        fields.pop(key) if value is None else fields.__setitem__(key, value)
    return encode_tensors(tensors, fields)


def _v(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=dtype)


def _gaps(values: list[int], dtype: torch.dtype = torch.uint8) -> Tensors:
    return {"w::gaps": torch.tensor(values, dtype=dtype), "w::values": _v(len(values))}


ALLOWED = "bfloat16, float16, float32, int16, int32, int64, uint8"
MALFORMED: dict[str, tuple[Any, str]] = {
    "not-bytes": ("{}", "adapter file must be bytes, got str"),
    "truncated": (b"abc", "adapter file: payload is truncated: 3 bytes, need at least 8"),
    "no-format": (
        _craft(format=None),
        "adapter file: format is None, expected 'fused-adapter-file-v1'",
    ),
    "other-format": (
        _craft(format="fused-adapter-v2"),
        "adapter file: format is 'fused-adapter-v2', expected 'fused-adapter-file-v1'",
    ),
    "no-shapes": (_craft(shapes=None), "adapter file: metadata lacks ['shapes']"),
    "bad-sha": (
        _craft(base_sha256="ABC"),
        "adapter file: base_sha256 must be 64 lowercase hex digits, got 'ABC'",
    ),
    "shapes-not-json": (
        _craft(shapes='{"w":[2,3]'),
        "adapter file: shapes is not valid JSON: Expecting ',' delimiter: line 1 column 11 "
        "(char 10)",
    ),
    "shapes-not-object": (
        _craft(shapes="[]"),
        "adapter file: shapes must be a JSON object of name to dims, got list",
    ),
    "shapes-negative": (
        _craft(shapes='{"w":[2,-3]}'),
        "tensor 'w': shape must be a list of non-negative integers, got [2, -3]",
    ),
    "shapes-bool": (
        _craft(shapes='{"w":[true]}'),
        "tensor 'w': shape must be a list of non-negative integers, got [True]",
    ),
    "shapes-huge": (
        _craft(shapes='{"w":[1099511627777]}'),
        "tensor 'w': shape [1099511627777] exceeds 64 dims or 1099511627776 elements",
    ),
    "shapes-twice": (
        _craft(shapes='{"w":[2,3],"w":[2,3]}'),
        "adapter file: shapes names tensor 'w' twice",
    ),
    "shapes-not-canonical": (
        _craft(shapes='{"w": [2, 3]}'),
        "adapter file: shapes is not canonical JSON (sorted keys, no spaces)",
    ),
    "stray-key": (
        _craft({**_gaps([1, 2]), "w::bias": _v(1)}),
        "adapter file: key 'w::bias' is not <name>::gaps or ::values",
    ),
    "bare-key": (
        _craft({**_gaps([1, 2]), "w": _v(1)}),
        "adapter file: key 'w' is not <name>::gaps or ::values",
    ),
    "unlisted": (
        _craft({**_gaps([1]), "v::gaps": _gaps([1])["w::gaps"], "v::values": _v(1)}),
        "tensor 'v': stored but not listed in shapes",
    ),
    "no-values": (
        _craft({"w::gaps": _gaps([1])["w::gaps"]}),
        "tensor 'w': listed in shapes but lacks '::values'",
    ),
    "gaps-float": (
        _craft({"w::gaps": torch.ones(2), "w::values": _v(2)}),
        "tensor 'w': gaps dtype float32 is not one of uint8, int16, int32, int64",
    ),
    "gaps-int8": (
        _craft(_gaps([1], torch.int8)),
        f"adapter file: tensor 'w::gaps': dtype int8 is not allowed (allowed: {ALLOWED})",
    ),
    "gaps-2d": (
        _craft({"w::gaps": torch.ones(1, 2, dtype=torch.uint8), "w::values": _v(2)}),
        "tensor 'w': gaps must be a non-empty vector (unchanged tensors are not stored), "
        "got shape [1, 2]",
    ),
    "gaps-empty": (
        _craft(_gaps([])),
        "tensor 'w': gaps must be a non-empty vector (unchanged tensors are not stored), "
        "got shape [0]",
    ),
    "negative-first": (
        _craft(_gaps([-1, 2], torch.int16)),
        "tensor 'w': first position -1 is negative",
    ),
    "duplicate": (
        _craft(_gaps([1, 0, 2])),
        "tensor 'w': gap 0 at index 1; positions must strictly increase",
    ),
    "decreasing": (
        _craft(_gaps([3, -1], torch.int16)),
        "tensor 'w': gap -1 at index 1; positions must strictly increase",
    ),
    "not-narrowest": (
        _craft(_gaps([1, 2, 2], torch.int16)),
        "tensor 'w': gaps stored as int16, but the largest (2) fits uint8",
    ),
    "out-of-range": (
        _craft(_gaps([5, 1])),
        "tensor 'w': position 6 is outside its 6 elements",
    ),
    "too-many": (
        _craft(_gaps([0, 1, 1, 1, 1, 1, 1])),
        "tensor 'w': positions run past its 6 elements",
    ),
    "overflow": (
        _craft(_gaps([2**62, 2**62, 2**62], torch.int64)),
        "tensor 'w': positions run past its 6 elements",
    ),
    "values-int": (
        _craft({**_gaps([1]), "w::values": torch.ones(1, dtype=torch.int32)}),
        "tensor 'w': values dtype int32 is not one of float32, float16, bfloat16",
    ),
    "values-f64": (
        _craft({**_gaps([1]), "w::values": torch.ones(1, dtype=torch.float64)}),
        f"adapter file: tensor 'w::values': dtype float64 is not allowed (allowed: {ALLOWED})",
    ),
    "values-short": (
        _craft({**_gaps([1, 2]), "w::values": _v(1)}),
        "tensor 'w': 2 positions but values of shape [1]",
    ),
    "values-2d": (
        _craft({**_gaps([1, 2]), "w::values": _v(2).reshape(1, 2)}),
        "tensor 'w': 2 positions but values of shape [1, 2]",
    ),
    "values-nan": (
        _craft({**_gaps([1, 2]), "w::values": torch.tensor([1.0, float("nan")])}),
        "adapter file: tensor 'w::values': 1 of 2 values are not finite (NaN or Inf)",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_its_exact_error(case: str) -> None:
    data, message = MALFORMED[case]
    with pytest.raises(AdapterFileError) as info:
        decode_adapter_file(data)
    assert str(info.value) == message


def test_size_limit_and_the_valid_baseline() -> None:
    data = _craft()
    f = decode_adapter_file(data)
    assert f.patches["w"].positions.tolist() == [1, 3, 5] and f.patches["w"].shape == (2, 3)
    with pytest.raises(AdapterFileError) as info:
        decode_adapter_file(data, max_bytes=100)
    assert (
        str(info.value) == f"adapter file: payload is {len(data)} bytes, more than the limit of 100"
    )


# --------------------------------------------------------------------------- build and apply


def _pair() -> tuple[Tensors, Tensors]:
    return {"w": torch.zeros(2, 3), "n": torch.zeros(2, dtype=torch.int64)}, {
        "w": torch.ones(2, 3),
        "n": torch.zeros(2, dtype=torch.int64),
    }


BUILD_ERRORS: dict[str, tuple[Callable[[Tensors, Tensors], None], str]] = {
    "reserved-extra": (
        lambda b, m: None,
        "adapter file: extra metadata may not use reserved keys ['shapes']",
    ),
    "missing": (
        lambda b, m: m.__delitem__("n"),
        "adapter file: merged tensors differ from the base's: missing ['n'], unexpected []",
    ),
    "shape": (
        lambda b, m: m.__setitem__("w", torch.ones(3, 2)),
        "tensor 'w': merged is float32[3, 2], base is float32[2, 3]",
    ),
    "int-changed": (
        lambda b, m: m.__setitem__("n", torch.ones(2, dtype=torch.int64)),
        "tensor 'n': changed, but its dtype int64 is not one of float32, float16, bfloat16",
    ),
    "nan": (
        lambda b, m: m["w"].__setitem__((0, 0), float("nan")),
        "tensor 'w': merged values are not all finite",
    ),
}


@pytest.mark.parametrize("case", sorted(BUILD_ERRORS))
def test_build_refuses_what_it_cannot_write(case: str) -> None:
    base, merged = _pair()
    mutate, message = BUILD_ERRORS[case]
    mutate(base, merged)
    extra = {"shapes": "x"} if case == "reserved-extra" else {}
    with pytest.raises(AdapterFileError) as info:
        build_adapter_file(base, merged, SHA_A, SHA_B, extra)
    assert str(info.value) == message
    with pytest.raises(AdapterFileError, match="model_sha256 must be 64 lowercase hex"):
        build_adapter_file(*_pair(), SHA_A, "", {})


APPLY_ERRORS = {
    "missing": ({"v": torch.zeros(2, 3)}, "tensor 'w': not in the model"),
    "shape": (
        {"w": torch.zeros(3, 2)},
        "tensor 'w': the model's shape [3, 2] differs from the file's [2, 3]",
    ),
    "dtype": (
        {"w": torch.zeros(2, 3, dtype=torch.float16)},
        "tensor 'w': the model's dtype torch.float16 differs from the file's torch.float32",
    ),
}


@pytest.mark.parametrize("case", sorted(APPLY_ERRORS))
def test_apply_and_merge_refuse_a_mismatched_model_without_writing(case: str) -> None:
    f: AdapterFile = decode_adapter_file(build_adapter_file(*_pair(), SHA_A, SHA_B, {}))
    state, message = APPLY_ERRORS[case]
    state = {"a": torch.zeros(2, 3), **state}  # "a" sorts first: it would be written first
    f = AdapterFile(f.base_sha256, f.model_sha256, f.extra, {"a": f.patches["w"], **f.patches})
    before = _digest(state)
    for call in (lambda: apply_adapter_file(state, f), lambda: merge_into(state, f)):
        with pytest.raises(AdapterFileError) as info:
            call()
        assert str(info.value) == message
    assert _digest(state) == before
