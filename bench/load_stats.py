"""What bench.load's simulated participants record: latencies, call and error counts.

Each load process keeps one `Stats`; the parent merges them (they are plain data, pickled
across processes) and summarises percentiles over every call of a kind.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REGISTER = "register"
HEARTBEAT = "heartbeat"
PULL = "pull_task"  # a long poll: includes the wait for a task
PUSH = "push_result"  # until the coordinator's headers: the result is accepted (or refused)
PUSH_WAIT = "push_result_wait"  # the whole call: includes the wait for the next task
DOWNLOAD = "download"
UPLOAD = "upload"
CALL_TYPES = (REGISTER, HEARTBEAT, PULL, PUSH, PUSH_WAIT, DOWNLOAD, UPLOAD)
LONG_POLLS = frozenset({PULL, PUSH_WAIT})
# Calls on the wire per kind; PUSH and PUSH_WAIT time the same call twice.
WIRE_CALLS = (REGISTER, HEARTBEAT, PULL, PUSH, DOWNLOAD, UPLOAD)
MAX_ERROR_SAMPLES = 12
SLOW_S = 1.0  # non-long-poll calls slower than this are counted per second of the run


@dataclass
class Stats:
    """Latencies (ms) of successful calls, call and error counts per call type."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CALL_TYPES})
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)  # "kind CODE"
    error_samples: list[str] = field(default_factory=list)
    rejected_results: int = 0
    client_errors: int = 0  # artifacts that failed their checks here
    inline_in: int = 0  # artifacts that came inside task replies
    inline_out: int = 0  # updates sent inside results
    next_from_push: int = 0  # tasks that came in a result's reply (no long poll needed)
    slow: Counter[int] = field(default_factory=Counter)  # unix second -> calls over SLOW_S

    def ok(self, kind: str, seconds: float) -> None:
        self.calls[kind] += 1
        self.latencies[kind].append(seconds * 1000.0)
        if seconds > SLOW_S and kind not in LONG_POLLS:
            self.slow[int(time.time())] += 1  # wall clock: comparable across processes

    def error(self, kind: str, message: str) -> None:
        self.calls[kind] += 1
        self.errors[kind] += 1
        code = message.split(":", 1)[0]
        self.error_codes[f"{kind} {code}"] += 1
        if self.error_codes[f"{kind} {code}"] == 1:  # the first of each kind and code
            self.sample(f"{kind}: {message}")

    def client_error(self, message: str) -> None:
        self.client_errors += 1
        self.sample(f"client: {message}")

    def rejected(self, message: str) -> None:
        self.rejected_results += 1
        self.sample(f"push_result not accepted: {message}")

    def sample(self, text: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)

    def merge(self, other: Stats) -> None:
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, []).extend(values)
        self.calls.update(other.calls)
        self.errors.update(other.errors)
        self.error_codes.update(other.error_codes)
        for text in other.error_samples:
            self.sample(text)
        self.rejected_results += other.rejected_results
        self.client_errors += other.client_errors
        self.inline_in += other.inline_in
        self.inline_out += other.inline_out
        self.next_from_push += other.next_from_push
        self.slow.update(other.slow)

    def summary(self, participants: int, rounds: int) -> dict[str, Any]:
        overall = [v for k, vs in self.latencies.items() if k not in LONG_POLLS for v in vs]
        groups = {**self.latencies, "overall": overall}
        return {
            "errors": sum(self.errors.values()),
            "errors_by_call": dict(self.errors),
            "errors_by_code": dict(self.error_codes),
            "error_samples": self.error_samples,
            "rejected_results": self.rejected_results,
            "client_errors": self.client_errors,
            "calls": {k: self.calls[k] for k in CALL_TYPES},
            "calls_per_participant_per_round": self.per_round(participants, rounds),
            "inline": {
                "artifacts_in_task_replies": self.inline_in,
                "updates_in_results": self.inline_out,
                "tasks_from_push_replies": self.next_from_push,
            },
            "p50_ms": {k: _pct(v, 50) for k, v in groups.items()},
            "p99_ms": {k: _pct(v, 99) for k, v in groups.items()},
            "max_ms": {k: (round(max(v), 3) if v else None) for k, v in groups.items()},
        }

    def slow_timeline(self, since: float) -> dict[int, int]:
        """Calls slower than SLOW_S (long polls aside) by second of the run since `since`."""
        return {int(t - since): n for t, n in sorted(self.slow.items())}

    def per_round(self, participants: int, rounds: int) -> dict[str, float]:
        """Wire calls per participant per job round (a round: its training task and its
        evaluation task); registration counted apart, it happens once per session."""
        each = max(1, participants * rounds)
        out = {k: round(self.calls[k] / each, 3) for k in WIRE_CALLS if k != REGISTER}
        out["total"] = round(sum(out.values()), 3)
        return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
