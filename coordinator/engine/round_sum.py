"""A round's uploads folded into its aggregate as they arrive, so that a round holds O(model)
memory however many participants it has, and the aggregate does not depend on the order the
uploads arrived in (a resumed job redoes a round to the same bits).

FedAvg (`StreamedFedAvg`) adds each upload, weighted by its declared sample count, to an exact
integer sum (`common/ml/exact_sum.py`) and keeps only its blob id. The round-level checks run
once the round is in (an update refused for its norm, a weight capped to the round's share) and
decide the final contributions; `finish` then subtracts what the sum holds and the round does
not want (re-reading those uploads from the artifact store) and adds what it lacks. The exact
sum is a function of its set of contributions, so the result equals a sum of the final ones
alone. The robust rules (median, trimmed mean) need every update at once: `HeldUpdates` keeps
them all, as before.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.ml.aggregation import Aggregator, aggregator
from fused.common.ml.exact_sum import MAX_BOUND, MAX_TERMS, ExactSum, magnitude
from fused.common.ml.fedavg import OrderedSum

Tensors = dict[str, torch.Tensor]
Load = Callable[[str], Tensors]  # an upload's tensors read again from its blob (blocking)


@dataclass(frozen=True)
class Received:
    """What a round keeps of an accepted upload: where to read it again, and the scalar the
    round-level checks need (its L2 distance from the round's starting point; None when the
    job's policy measures no norms)."""

    blob_id: str
    norm: float | None
    # per adaptable tensor, sum |update - start| (a training job's last round records it)
    distances: dict[str, float] | None = None


@dataclass(frozen=True)
class Contribution:
    participant: str
    blob_id: str
    weight: int


class RoundSum(ABC):
    """Where a round's decoded uploads go. `fold` runs in worker threads as uploads arrive;
    `finish` once, after the round's checks, with the contributions in participant order."""

    def __init__(self, load: Load) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._closed = False  # a check still running past the round's end folds nothing

    @abstractmethod
    def fold(self, contribution: Contribution, tensors: Tensors) -> None:
        """Take one accepted upload (blocking: call it in a worker thread)."""

    @abstractmethod
    def _combine(self, final: Sequence[Contribution]) -> Tensors: ...

    def finish(self, final: Sequence[Contribution]) -> Tensors:
        """The aggregate of `final` (blocking: call it in a worker thread)."""
        if not final:
            raise ValueError("aggregation needs at least one update, got none")
        with self._lock:
            self._closed = True
        return self._combine(final)


class StreamedFedAvg(RoundSum):
    """The sample-weighted mean, summed exactly as uploads arrive."""

    def __init__(self, load: Load) -> None:
        super().__init__(load)
        self._sum = ExactSum()
        self._folded: dict[str, Contribution] = {}  # by participant: what the sum holds
        self._held_bound = 0  # sum of the folded contributions' bounds
        self._sizes: dict[str, int] = {}  # by blob: the largest |value| (exact_sum.magnitude)

    def fold(self, contribution: Contribution, tensors: Tensors) -> None:
        size = magnitude(tensors)
        with self._lock:
            self._sizes[contribution.blob_id] = size
            if self._closed or not self._fits(size * contribution.weight):
                return  # `finish` adds it from its blob if the round keeps it
            self._sum.add(tensors, contribution.weight)
            self._folded[contribution.participant] = contribution
            self._held_bound += size * contribution.weight

    def _fits(self, bound: int) -> bool:
        """Whether one more contribution keeps the integer limbs from overflowing."""
        return self._held_bound + bound < MAX_BOUND and len(self._folded) < MAX_TERMS

    def _size(self, blob_id: str) -> int:
        if blob_id not in self._sizes:
            self._sizes[blob_id] = magnitude(self._load(blob_id))
        return self._sizes[blob_id]

    def _combine(self, final: Sequence[Contribution]) -> Tensors:
        bound = sum(c.weight * self._size(c.blob_id) for c in final)
        if bound >= MAX_BOUND or len(final) > MAX_TERMS:
            return self._in_order(final)  # values too large for the fixed-point grid
        wanted = {c.participant: c for c in final}
        for pid, held in list(self._folded.items()):
            if wanted.get(pid) != held:  # refused, capped, or closed before it was accepted
                self._sum.subtract(self._load(held.blob_id), held.weight)
                del self._folded[pid]
        for c in final:
            if c.participant not in self._folded:
                self._sum.add(self._load(c.blob_id), c.weight)
                self._folded[c.participant] = c
        return self._sum.mean(sum(c.weight for c in final))

    def _in_order(self, final: Sequence[Contribution]) -> Tensors:
        """`fedavg`'s float64 sum in participant order, reading one upload at a time."""
        acc = OrderedSum()
        for c in final:
            acc.add(self._load(c.blob_id), c.weight)
        return acc.mean(sum(c.weight for c in final))


class HeldUpdates(RoundSum):
    """A rule that needs every update at once (median, trimmed mean): all of them are kept."""

    def __init__(self, rule: Aggregator, load: Load) -> None:
        super().__init__(load)
        self._rule = rule
        self._held: dict[str, Tensors] = {}  # by blob

    def fold(self, contribution: Contribution, tensors: Tensors) -> None:
        with self._lock:
            if not self._closed:
                self._held[contribution.blob_id] = tensors

    def _combine(self, final: Sequence[Contribution]) -> Tensors:
        updates = [(self._tensors(c.blob_id), c.weight) for c in final]
        self._held.clear()
        return self._rule(updates)

    def _tensors(self, blob_id: str) -> Tensors:
        held = self._held.get(blob_id)
        return held if held is not None else self._load(blob_id)


def round_sum(policy: AggregationPolicy, load: Load) -> RoundSum:
    """Where a round of this policy's jobs puts its uploads."""
    if policy.aggregator == "fedavg":
        return StreamedFedAvg(load)
    return HeldUpdates(aggregator(policy.aggregator, policy.trim_fraction), load)
