"""An exact, order-free weighted sum of state dicts: sum_k w_k * x_k kept as integers on a
fixed-point grid, so a round's FedAvg can fold updates in as they arrive, in any order, hold
O(model) memory, and still give the same bits (and subtract a contribution exactly).

Floating values: w * x is formed in float64 (exact for float32, float16 and bfloat16 values
with integer weights below 2^29; a float64 value's product is rounded there, once per
contribution) and split into three int64 limbs, at 2^0, 2^-40 and 2^-80:
the integer part, then 40 bits of fraction twice, the last rounded to nearest. Only bits below
2^-80 are lost (|x| < 2^-57 for float32), and each contribution is rounded on its own, so the
sum is a function of the set of contributions. Integer and bool tensors are summed as int64.
The limbs never overflow while the sum of the contributions' bounds (weight x `magnitude`)
stays below `MAX_BOUND` and at most `MAX_TERMS` are summed; the caller keeps to both.

`mean` rounds the exact sum to float64 once (exactly, whenever the sum is a float64 value) and
divides by the total as `fedavg.fedavg` does, so where the float64 sum in arrival order was
exact, both give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

LIMB_BITS = 40
MAX_BOUND = 2**62  # the top limb holds |sum| below this (int64, with room for the carries)
MAX_TERMS = 2**22  # the fraction limbs hold this many contributions of up to 2^40 each
_UNIT = 2**LIMB_BITS
_SCALE = float(_UNIT)
CHUNK = 1 << 16  # elements per slice

Tensors = Mapping[str, torch.Tensor]


def magnitude(tensors: Tensors) -> int:
    """The smallest integer at or above every |value| of every tensor (0 for no values)."""
    top = 0.0
    for t in tensors.values():
        if t.numel():
            values = t.detach() if t.dtype != torch.bool else t.detach().to(torch.uint8)
            top = max(top, float(values.abs().max().to(torch.float64)))
    return math.ceil(top)


def _limbs(t: torch.Tensor, weight: int) -> list[torch.Tensor]:
    """weight * t as limbs: one for integers, three for floats. Casts to int64 truncate
    toward zero, so each fraction keeps the value's sign and every subtraction is exact."""
    if not t.is_floating_point():
        return [t.to(torch.int64) * weight]
    value = t.to(torch.float64, copy=True).mul_(weight)  # never scale the caller's tensor
    whole = value.to(torch.int64)
    rest = value.sub_(whole).mul_(_SCALE)
    mid = rest.to(torch.int64)
    low = rest.sub_(mid).mul_(_SCALE).round_().to(torch.int64)
    return [whole, mid, low]


def _chunks(n: int) -> range:
    """Starts of the slices a flat tensor is worked on in: temporaries stay in cache."""
    return range(0, n, CHUNK)


def _normalized(limbs: torch.Tensor) -> torch.Tensor:
    """The same sum with carries moved up, so that both fraction limbs lie in [0, 2^40)."""
    whole, mid, low = limbs.clone().unbind(0)
    carry = torch.div(low, _UNIT, rounding_mode="floor")
    low.sub_(carry * _UNIT)
    mid.add_(carry)
    carry = torch.div(mid, _UNIT, rounding_mode="floor")
    mid.sub_(carry * _UNIT)
    whole.add_(carry)
    return torch.stack([whole, mid, low])


def _to_float64(limbs: torch.Tensor) -> torch.Tensor:
    """The limbs' sum in float64. Negative sums are negated first, so the three parts are
    non-negative and do not overlap: added from the top, each partial sum is a truncation of
    the total, hence exact whenever the total is a float64 value."""
    limbs = _normalized(limbs)
    negative = limbs[0] < 0  # the fraction limbs are in [0, 1) units, so the sign is the top's
    whole, mid, low = _normalized(torch.where(negative, -limbs, limbs)).unbind(0)
    size = whole.to(torch.float64)
    size.add_(mid.to(torch.float64).mul_(2.0**-LIMB_BITS))
    size.add_(low.to(torch.float64).mul_(2.0 ** (-2 * LIMB_BITS)))
    return torch.where(negative, -size, size)


def _rounded_quotient(total: torch.Tensor, divisor: int) -> torch.Tensor:
    """total / divisor to the nearest integer, ties to even (as torch.round of the float)."""
    q = torch.div(total, divisor, rounding_mode="floor")
    twice_rest = (total - q * divisor) * 2
    up = (twice_rest > divisor) | ((twice_rest == divisor) & (q % 2 == 1))
    return q + up.to(torch.int64)


class ExactSum:
    """sum_k w_k * x_k of state dicts with the keys, shapes and dtypes of the first one added."""

    def __init__(self) -> None:
        self._limbs: dict[str, torch.Tensor] = {}
        self._like: dict[str, torch.Tensor] = {}  # an empty tensor of each key's dtype
        self._shapes: dict[str, torch.Size] = {}

    def add(self, tensors: Tensors, weight: int) -> None:
        self._apply(tensors, weight, 1)

    def subtract(self, tensors: Tensors, weight: int) -> None:
        """Undo an `add` of the same tensors and weight, exactly."""
        self._apply(tensors, weight, -1)

    def _apply(self, tensors: Tensors, weight: int, sign: int) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            raise ValueError(f"weights must be positive integers, got {weight!r}")
        if not self._limbs:
            self._start(tensors)
        self._check(tensors)
        for name, t in tensors.items():
            flat, limbs = t.detach().reshape(-1), self._limbs[name]
            for i in _chunks(flat.numel()):
                for row, part in enumerate(_limbs(flat[i : i + CHUNK], weight)):
                    limbs[row, i : i + CHUNK].add_(part, alpha=sign)

    def _start(self, tensors: Tensors) -> None:
        for name, t in tensors.items():
            if t.is_complex():
                raise ValueError(f"tensor {name!r}: complex tensors cannot be summed exactly")
            rows = 3 if t.is_floating_point() else 1
            self._limbs[name] = torch.zeros((rows, t.numel()), dtype=torch.int64, device=t.device)
            self._like[name] = t.new_empty(0)
            self._shapes[name] = t.shape

    def _check(self, tensors: Tensors) -> None:
        if set(tensors) != set(self._limbs):
            raise ValueError(f"keys {sorted(tensors)} differ from the sum's {sorted(self._limbs)}")
        for name, t in tensors.items():
            if t.shape != self._shapes[name] or t.dtype != self._like[name].dtype:
                raise ValueError(
                    f"tensor {name!r}: {t.dtype} {tuple(t.shape)} differs from the sum's "
                    f"{self._like[name].dtype} {tuple(self._shapes[name])}"
                )

    def mean(self, total: int) -> dict[str, torch.Tensor]:
        """The sum divided by `total` (the sum of the weights), in each tensor's dtype, with
        the first update's key order: floats through float64 as `fedavg` does; integers and
        bools to the nearest integer, ties to even."""
        if not self._limbs:
            raise ValueError("the sum holds no update")
        out: dict[str, torch.Tensor] = {}
        for name, limbs in self._limbs.items():
            like = self._like[name]
            flat = torch.empty(limbs.shape[1], dtype=like.dtype, device=like.device)
            for i in _chunks(flat.numel()):
                flat[i : i + CHUNK] = _mean(limbs[:, i : i + CHUNK], total)
            out[name] = flat.reshape(self._shapes[name])
        return out


def _mean(limbs: torch.Tensor, total: int) -> torch.Tensor:
    if limbs.shape[0] == 1:
        return _rounded_quotient(limbs[0], total)
    return _to_float64(limbs).div_(total)
