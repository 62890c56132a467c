"""The exact, order-free weighted sum behind a round's streamed FedAvg: the same bits in any
order, exact subtraction, and the old float64 FedAvg's result where that one was exact."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from fused.common.ml.exact_sum import ExactSum, magnitude
from fused.common.ml.fedavg import fedavg

Tensors = dict[str, torch.Tensor]
Update = tuple[Tensors, int]


def _random_updates(seed: int, count: int = 12) -> list[Update]:
    """Model-like updates over many magnitudes, several dtypes and an integer buffer."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    updates = []
    for _ in range(count):
        scale = 10.0 ** rng.uniform(-9, 4)
        state = {
            "conv.weight": torch.randn(4, 3, 3, generator=gen) * scale,
            "bn.running_var": torch.rand(16, generator=gen, dtype=torch.float64) * 1e3,
            "half": torch.randn(8, generator=gen).to(torch.bfloat16),
            "bn.num_batches_tracked": torch.tensor(rng.randint(0, 10**6)),
            "flag": torch.tensor([rng.random() < 0.5, True]),
        }
        updates.append((state, rng.randint(1, 50_000)))
    return updates


def _summed(updates: list[Update]) -> Tensors:
    acc = ExactSum()
    for state, n in updates:
        acc.add(state, n)
    return acc.mean(sum(n for _, n in updates))


def _identical(a: Tensors, b: Tensors) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_order_gives_the_same_bits(seed: int) -> None:
    updates = _random_updates(seed)
    first = _summed(updates)
    rng = random.Random(seed)
    for _ in range(5):
        shuffled = updates[:]
        rng.shuffle(shuffled)
        assert _identical(_summed(shuffled), first)


@pytest.mark.parametrize("seed", [0, 1])
def test_close_to_the_float64_fedavg_and_within_a_rounding_of_the_exact_mean(seed: int) -> None:
    updates = _random_updates(seed)
    streamed, held = _summed(updates), fedavg(updates)
    for name, value in held.items():
        if value.is_floating_point():
            torch.testing.assert_close(streamed[name], value, rtol=1e-6, atol=1e-30)
        else:
            assert torch.equal(streamed[name], value)
    total = sum(n for _, n in updates)
    flat = streamed["conv.weight"].reshape(-1)
    for i in range(flat.numel()):  # the exact rational mean, rounded once to float32
        exact = sum(Fraction(float(s["conv.weight"].reshape(-1)[i])) * n for s, n in updates)
        nearest = torch.tensor(float(exact / total), dtype=torch.float64).to(torch.float32)
        assert abs(float(flat[i]) - float(nearest)) <= abs(float(nearest)) * 2**-23


def test_bit_identical_to_fedavg_where_its_float64_sum_was_exact() -> None:
    gen = torch.Generator().manual_seed(3)
    updates = [  # dyadic values on a coarse grid: every float64 partial sum is exact
        ({"w": torch.randint(-(2**20), 2**20, (64,), generator=gen).float() / 2**10}, n)
        for n in (3, 700, 12, 5, 99_999)
    ]
    assert _identical(_summed(updates), fedavg(updates))
    single = [({"w": torch.randn(64, generator=gen), "s": torch.tensor(7)}, 1)]
    assert _identical(_summed(single), fedavg(single))


def test_a_subtracted_update_leaves_no_trace() -> None:
    a, b, c = _random_updates(4, count=3)
    acc = ExactSum()
    for state, n in (a, b, c):
        acc.add(state, n)
    acc.subtract(*b)
    acc.subtract(*c)
    acc.add(c[0], 7)  # c re-weighted, as a capped weight is
    assert _identical(acc.mean(a[1] + 7), _summed([a, (c[0], 7)]))


def test_signs_tiny_values_and_integer_ties() -> None:
    tiny = torch.tensor([-(2.0**-60), -3.5, 2.0**-80, -0.0, 1e10])
    out = _summed([({"w": tiny}, 1)])
    assert torch.equal(out["w"], tiny)  # on the 2^-80 grid: exact
    assert not torch.signbit(out["w"][3])  # -0.0 sums to +0.0, as in fedavg
    steps = [({"s": torch.tensor(1)}, 1), ({"s": torch.tensor(2)}, 1)]
    assert int(_summed(steps)["s"]) == int(fedavg(steps)["s"]) == 2  # 1.5: ties to even
    steps = [({"s": torch.tensor(2)}, 1), ({"s": torch.tensor(3)}, 1)]
    assert int(_summed(steps)["s"]) == int(fedavg(steps)["s"]) == 2  # 2.5: ties to even


def test_mismatched_updates_and_bad_weights_are_refused() -> None:
    acc = ExactSum()
    acc.add({"w": torch.zeros(2)}, 1)
    with pytest.raises(ValueError, match="keys"):
        acc.add({"v": torch.zeros(2)}, 1)
    with pytest.raises(ValueError, match="differs"):
        acc.add({"w": torch.zeros(3)}, 1)
    with pytest.raises(ValueError, match="positive integers"):
        acc.add({"w": torch.zeros(2)}, 0)
    with pytest.raises(ValueError, match="no update"):
        ExactSum().mean(1)


def test_magnitude_bounds_every_value() -> None:
    assert magnitude({"a": torch.tensor([0.25, -3.5]), "b": torch.tensor([2])}) == 4
    assert magnitude({"a": torch.tensor([3e38])}) >= 3 * 10**38
    assert magnitude({"e": torch.zeros(0)}) == 0
    flags = {"b": torch.tensor([True]), "u": torch.tensor([7], dtype=torch.uint8)}
    assert magnitude(flags) == 7


def test_inputs_are_left_untouched() -> None:
    state = {"d": torch.tensor([1.5, -2.25], dtype=torch.float64), "i": torch.tensor([3])}
    before = {k: v.clone() for k, v in state.items()}
    acc = ExactSum()
    acc.add(state, 9)
    acc.subtract(state, 9)
    assert _identical(state, before)
