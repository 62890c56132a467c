"""The Flower comparison's arithmetic: the measured window of rounds, bytes and seconds per
round, message bytes by method from two scrapes, and the FUSED / Flower ratios."""

from __future__ import annotations

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


def system_report(
    events: Sequence[WireEvent],
    started: Sequence[float],
    finished: Sequence[float],
    warmup: int,
    accuracy: float,
) -> dict[str, Any]:
    """The per-system block of the report: the proxy's bytes and the wall time of the measured
    window, per measured round; `started` / `finished` are the times of every round run."""
    window = measured_window(started, finished, warmup)
    moved = bytes_in_window(events, window.start, window.end)
    return {
        "bytes_per_round": per_round(moved["total"], window.rounds),
        "bytes_up_per_round": per_round(moved[UP], window.rounds),
        "bytes_down_per_round": per_round(moved[DOWN], window.rounds),
        "seconds_per_round": per_round(window.end - window.start, window.rounds),
        "round_seconds": [b - a for a, b in zip(started, finished, strict=True)],
        "accuracy": accuracy,
    }


def compare(fused: dict[str, Any], flower: dict[str, Any]) -> dict[str, Any]:
    """Ratios FUSED / Flower and whether the goal holds (no more bytes, no more seconds)."""
    ratio_bytes = ratio(fused["bytes_per_round"], flower["bytes_per_round"])
    ratio_seconds = ratio(fused["seconds_per_round"], flower["seconds_per_round"])
    return {
        "ratio_bytes": ratio_bytes,
        "ratio_seconds": ratio_seconds,
        "goal_met": {
            "bytes": ratio_bytes is not None and ratio_bytes <= 1.0,
            "seconds": ratio_seconds is not None and ratio_seconds <= 1.0,
        },
    }


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest elementwise difference between two state dicts with the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(a.keys() ^ b.keys())}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
