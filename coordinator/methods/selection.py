"""Layer selection rules: which parameter tensors a FUSED adapter goes on.

Every rule sees the same measurements from the sensitivity round: per tensor, the
sample-weighted mean L1 distance local training moves it on the participants' data (the
paper's critical-layer identification, CLI) and, when the rule asks for it, the same on the
forgotten data alone, reported by the participants that hold it. Only these scalars leave a
participant. A rule turns them into one score per tensor; the top K scores are adapted.

A new rule is a subclass here plus its entry in SELECTION_RULES (`--selection NAME`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Sensitivity:
    """What the sensitivity round measured, per adaptable tensor."""

    retained: Mapping[str, float]  # CLI distances on the participants' data
    forgotten: Mapping[str, float] | None  # on the forgotten data; None: no holder reported
    sizes: Mapping[str, int]  # elements per tensor


@dataclass(frozen=True)
class Scores:
    values: dict[str, float]  # tensor -> score; the K highest are adapted
    note: str = ""  # why the rule chose as it did, when that is not plain


class SelectionRule(ABC):
    name: ClassVar[str]
    needs_forget: ClassVar[bool]  # the sensitivity round also measures the forgotten data

    @abstractmethod
    def scores(self, s: Sensitivity) -> Scores: ...


class Cli(SelectionRule):
    """The paper's rule: where local training on the federation's data moves parameters most
    (plain L1, so large tensors rank high)."""

    name = "cli"
    needs_forget = False

    def scores(self, s: Sensitivity) -> Scores:
        return Scores(dict(s.retained))


def _shares(distances: Mapping[str, float]) -> dict[str, float]:
    total = sum(distances.values())
    return {n: (d / total if total > 0 else 0.0) for n, d in distances.items()}


# A tensor holding less than this share of the adaptable parameters (a bias, a norm's scale)
# cannot carry an adapter worth its traffic: the forget-aware rule does not choose it.
MIN_TENSOR_SHARE = 0.001


def concentration(s: Sensitivity) -> dict[str, float]:
    """Per tensor, the forgotten data's share of movement over the federation's share: above
    1 where the forgotten data drives a tensor more than everything else does. Shares, not
    distances: the forgotten set is smaller, so its round takes fewer steps."""
    assert s.forgotten is not None
    forget, kept = _shares(s.forgotten), _shares(s.retained)
    return {n: forget[n] / kept[n] if kept[n] > 0 else 0.0 for n in s.retained}


_NO_HOLDER = "no participant holding the forgotten data reported: ranked by CLI"


class Forget(SelectionRule):
    """Where the forgotten data concentrates (`concentration`), among tensors large enough to
    carry an adapter (MIN_TENSOR_SHARE); the smaller ones score 0."""

    name = "forget"
    needs_forget = True

    def scores(self, s: Sensitivity) -> Scores:
        if s.forgotten is None:
            return Scores(dict(s.retained), _NO_HOLDER)
        ratio, total = concentration(s), sum(s.sizes.values())
        big = {n for n in s.retained if s.sizes[n] >= MIN_TENSOR_SHARE * total}
        return Scores({n: ratio[n] if n in big else 0.0 for n in s.retained})


class Combined(SelectionRule):
    """The two rankings interleaved: the best tensor of each in turn (forget-aware first), so
    K = 2 adapts the forgotten data's tensor and the federation's."""

    name = "combined"
    needs_forget = True

    def scores(self, s: Sensitivity) -> Scores:
        if s.forgotten is None:
            return Scores(dict(s.retained), _NO_HOLDER)
        forget = Forget().scores(s).values
        merged: list[str] = []
        for pair in zip(_order(forget), _order(s.retained), strict=True):
            merged.extend(name for name in pair if name not in merged)
        n = len(merged)
        return Scores({name: float(n - i) for i, name in enumerate(merged)})


def _order(scores: Mapping[str, float]) -> list[str]:
    return sorted(scores, key=lambda n: (-scores[n], n))


SELECTION_RULES: dict[str, SelectionRule] = {r.name: r for r in (Cli(), Forget(), Combined())}


def selection_rule(name: str) -> SelectionRule:
    """The rule named; the job's start refused any other name (jobs.unlearn)."""
    return SELECTION_RULES[name]
