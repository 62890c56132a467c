from __future__ import annotations

import pytest
import torch

from fused.common.ml.fedavg import fedavg, weighted_mean


def _state(w: list[float], steps: int = 0) -> dict[str, torch.Tensor]:
    return {
        "w": torch.tensor(w, dtype=torch.float32),
        "num_batches_tracked": torch.tensor(steps, dtype=torch.int64),
    }


def test_weighted_result_exact() -> None:
    out = fedavg([(_state([0.0, 8.0]), 1), (_state([4.0, 0.0]), 3)])
    assert out["w"].dtype == torch.float32
    assert torch.equal(out["w"], torch.tensor([3.0, 2.0]))


def test_three_way_and_key_order() -> None:
    a = {"b": torch.tensor([1.0]), "a": torch.tensor([[2.0]], dtype=torch.float64)}
    b = {"a": torch.tensor([[6.0]], dtype=torch.float64), "b": torch.tensor([5.0])}
    c = {"a": torch.tensor([[10.0]], dtype=torch.float64), "b": torch.tensor([9.0])}
    out = fedavg([(a, 2), (b, 1), (c, 1)])
    assert list(out) == ["b", "a"]
    assert torch.equal(out["b"], torch.tensor([4.0]))  # (2 + 5 + 9) / 4
    assert torch.equal(out["a"], torch.tensor([[5.0]], dtype=torch.float64))  # (4 + 6 + 10) / 4


def test_float64_accumulation_avoids_float32_overflow() -> None:
    big = 3e38  # 2 * big overflows float32
    out = fedavg([({"w": torch.tensor([big])}, 1), ({"w": torch.tensor([big])}, 1)])
    assert out["w"].dtype == torch.float32
    assert torch.equal(out["w"], torch.tensor([big]))


def test_half_precision_round_trip() -> None:
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    out = fedavg([(a, 1), (b, 1)])
    assert out["w"].dtype == torch.bfloat16
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0], dtype=torch.bfloat16))


def test_integer_buffers_rounded_to_nearest() -> None:
    out = fedavg([(_state([0.0], steps=10), 1), (_state([0.0], steps=20), 2)])
    t = out["num_batches_tracked"]
    assert t.dtype == torch.int64 and t.shape == ()
    assert int(t) == 17  # 50 / 3 = 16.67 -> 17
    out = fedavg([(_state([0.0], steps=10), 3), (_state([0.0], steps=20), 1)])
    assert int(out["num_batches_tracked"]) == 12  # 50 / 4 = 12.5 -> 12 (ties to even)
    out = fedavg([(_state([0.0], steps=10), 2), (_state([0.0], steps=13), 1)])
    assert int(out["num_batches_tracked"]) == 11  # 33 / 3 = 11


def test_single_update_is_copied_not_aliased() -> None:
    s = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "d": torch.tensor([1.0]).double()}
    out = fedavg([(s, 5)])
    for k in s:
        assert torch.equal(out[k], s[k])
        assert out[k].dtype == s[k].dtype
        assert out[k].untyped_storage().data_ptr() != s[k].untyped_storage().data_ptr()
    out["w"].add_(1.0)
    out["d"].add_(1.0)
    assert torch.equal(s["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(s["d"], torch.tensor([1.0]).double())


def test_works_on_a_real_state_dict() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sd = model.state_dict()
    out = fedavg([(sd, 4), (sd, 6)])
    assert set(out) == set(sd)
    for k in sd:
        assert torch.allclose(out[k].double(), sd[k].double(), rtol=0, atol=1e-7)
    model.load_state_dict(out)


def test_no_updates() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])


@pytest.mark.parametrize("count", [0, -3])
def test_non_positive_count(count: int) -> None:
    with pytest.raises(ValueError, match="sample count"):
        fedavg([(_state([1.0]), 2), (_state([1.0]), count)])


def test_mismatched_keys_named() -> None:
    a = {"x": torch.zeros(1), "y": torch.zeros(1)}
    b = {"x": torch.zeros(1), "z": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"missing \['y'\].*extra \['z'\]"):
        fedavg([(a, 1), (b, 1)])


def test_mismatched_shape_named() -> None:
    a = {"layer.weight": torch.zeros(2, 3)}
    b = {"layer.weight": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match=r"layer\.weight.*shape"):
        fedavg([(a, 1), (b, 1)])


def test_mismatched_dtype_named() -> None:
    a = {"layer.bias": torch.zeros(2)}
    b = {"layer.bias": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"layer\.bias.*dtype"):
        fedavg([(a, 1), (b, 1)])


def test_weighted_mean() -> None:
    assert weighted_mean([(1.0, 1), (4.0, 2)]) == 3.0
    assert weighted_mean([(0.5, 7)]) == 0.5
    with pytest.raises(ValueError):
        weighted_mean([])
    with pytest.raises(ValueError):
        weighted_mean([(1.0, 0)])
