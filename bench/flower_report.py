"""The Flower comparison's arithmetic: the measured window of rounds, bytes and seconds per
round, the first round's extra cost, a round's pure compute, message bytes by method from two
scrapes, and the FUSED / Flower ratios."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.proxy import DOWN, UP, WireEvent, bytes_in_window

if TYPE_CHECKING:
    import torch


def per_round(value: float, rounds: int) -> float:
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return value / rounds


def ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs, or None where theirs is zero (nothing to compare against)."""
    return ours / theirs if theirs else None


Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]  # common.launch.scrape's


def message_bytes_by_method(
    before: Samples, after: Samples, methods: frozenset[str], phases: frozenset[str]
) -> dict[str, float]:
    """Growth of `fused_wire_bytes_total` between two scrapes per method among `methods`
    (directions and participants summed), over the given phases ("none": Register, PullTask,
    Heartbeat; "train": the transfers and results of training tasks)."""
    totals: dict[str, float] = {}
    for key, value in after.items():
        name, labels = key
        label = dict(labels)
        method = label.get("method", "")
        if name == "fused_wire_bytes_total" and label.get("phase") in phases and method in methods:
            totals[method] = totals.get(method, 0.0) + value - before.get(key, 0.0)
    return dict(sorted(totals.items()))


@dataclass(frozen=True)
class Window:
    """The measured rounds: from the end of the last warm-up round (the start of round 1 when
    there is none) to the end of the last round."""

    start: float
    end: float
    rounds: int


def measured_window(started: Sequence[float], finished: Sequence[float], warmup: int) -> Window:
    """Rounds run back to back, so the window after `warmup` rounds is [finish of the last
    warm-up round, finish of the last round] and holds the rest of the rounds."""
    if len(started) != len(finished):
        raise ValueError(f"{len(started)} round starts but {len(finished)} round ends")
    rounds = len(finished) - warmup
    if warmup < 0 or rounds < 1:
        raise ValueError(f"{len(finished)} rounds leave none to measure after {warmup} warm-up")
    start = started[0] if warmup == 0 else finished[warmup - 1]
    if finished[-1] < start:
        raise ValueError("the last round ends before the measured window starts")
    return Window(start, finished[-1], rounds)


def first_round_extra(round_seconds: Sequence[float]) -> float | None:
    """The first round's seconds minus the mean of the later rounds' (None with one round):
    what the first round pays beyond a steady one (first-use costs, connection set-up)."""
    if len(round_seconds) < 2:
        return None
    later = round_seconds[1:]
    return round_seconds[0] - sum(later) / len(later)


def system_report(
    events: Sequence[WireEvent],
    started: Sequence[float],
    finished: Sequence[float],
    warmup: int,
    accuracy: float,
    participants: int,
) -> dict[str, Any]:
    """The per-system block of the report: the proxy's bytes and the wall time of the measured
    window, per measured round (bytes also per participant); the first round's extra cost;
    `started` / `finished` are the times of every round run."""
    window = measured_window(started, finished, warmup)
    moved = bytes_in_window(events, window.start, window.end)
    if participants < 1:
        raise ValueError(f"participants must be >= 1, got {participants}")
    round_seconds = [b - a for a, b in zip(started, finished, strict=True)]
    return {
        "bytes_per_round": per_round(moved["total"], window.rounds),
        "bytes_per_participant_per_round": per_round(moved["total"], window.rounds) / participants,
        "bytes_up_per_round": per_round(moved[UP], window.rounds),
        "bytes_down_per_round": per_round(moved[DOWN], window.rounds),
        "seconds_per_round": per_round(window.end - window.start, window.rounds),
        "seconds_per_round_all": per_round(finished[-1] - started[0], len(finished)),
        "round_seconds": round_seconds,
        "first_round_extra_seconds": first_round_extra(round_seconds),
        "accuracy": accuracy,
    }


@dataclass(frozen=True)
class RoundCompute:
    """The pure local compute of one round, from each participant's epoch timed alone.

    Participants train in parallel, one thread each, on `cores` cores. A round can end no
    sooner than its slowest participant's epoch (the max), nor sooner than all their epochs'
    work spread over the cores that can run it at once (the sum over min(participants,
    cores)); with preemptive scheduling the larger of the two is reachable, so it is the
    round's compute: the max where every participant has a core of its own, the sum's share
    where they outnumber the cores."""

    epoch_seconds: tuple[float, ...]
    cores: int

    @property
    def parallel(self) -> int:
        return min(len(self.epoch_seconds), self.cores)

    @property
    def seconds(self) -> float:
        return max(max(self.epoch_seconds), sum(self.epoch_seconds) / self.parallel)

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch_seconds": list(self.epoch_seconds),
            "max_epoch_seconds": max(self.epoch_seconds),
            "sum_epoch_seconds": sum(self.epoch_seconds),
            "cores": self.cores,
            "parallel": self.parallel,
            "round_seconds": self.seconds,
        }


def round_compute(epoch_seconds: Sequence[float], cores: int) -> RoundCompute:
    if not epoch_seconds or min(epoch_seconds) <= 0 or cores < 1:
        raise ValueError(f"need positive epoch times and cores, got {epoch_seconds}, {cores}")
    return RoundCompute(tuple(epoch_seconds), cores)


# A system's figures that a run of several passes reports as their median.
MEDIAN_KEYS = (
    "bytes_per_round",
    "bytes_per_participant_per_round",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "seconds_per_round",
    "seconds_per_round_all",
    "first_round_extra_seconds",
)


def median_report(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One system's report over several passes: the first pass's, each MEDIAN_KEYS figure
    replaced by its median over the passes (None where a pass has none), and each pass's
    figures under "passes"."""
    if not passes:
        raise ValueError("no passes to summarise")
    medians: dict[str, Any] = {}
    for key in MEDIAN_KEYS:
        values = [p[key] for p in passes]
        medians[key] = None if None in values else statistics.median(values)
    figures = [{key: p[key] for key in (*MEDIAN_KEYS, "round_seconds")} for p in passes]
    return {**passes[0], **medians, "passes": figures}


def median_compute(passes: Sequence[RoundCompute]) -> RoundCompute:
    """Each participant's median epoch over the passes, combined as one round's compute."""
    if not passes:
        raise ValueError("no passes to summarise")
    epochs = zip(*(p.epoch_seconds for p in passes), strict=True)
    return round_compute([statistics.median(e) for e in epochs], passes[0].cores)


COMPUTE_RATIO_GOAL = 1.2  # seconds per round over the round's pure compute, FUSED's


def compare(fused: dict[str, Any], flower: dict[str, Any], compute_s: float) -> dict[str, Any]:
    """Ratios FUSED / Flower, each system's seconds per round over the round's pure compute
    (`compute_s`), and whether the goals hold: no more bytes, no more seconds than Flower,
    FUSED within COMPUTE_RATIO_GOAL of the compute."""
    ratio_bytes = ratio(fused["bytes_per_round"], flower["bytes_per_round"])
    ratio_seconds = ratio(fused["seconds_per_round"], flower["seconds_per_round"])
    over_compute = {
        name: ratio(side["seconds_per_round"], compute_s)
        for name, side in (("fused", fused), ("flower", flower))
    }
    fused_over = over_compute["fused"]
    return {
        "ratio_bytes": ratio_bytes,
        "ratio_seconds": ratio_seconds,
        "seconds_per_round_over_compute": over_compute,
        "goal_met": {
            "bytes": ratio_bytes is not None and ratio_bytes <= 1.0,
            "seconds": ratio_seconds is not None and ratio_seconds <= 1.0,
            "compute_ratio": fused_over is not None and fused_over <= COMPUTE_RATIO_GOAL,
        },
    }


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest elementwise difference between two state dicts with the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(a.keys() ^ b.keys())}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
