"""`fusedctl watch`: a job's progress from its events.

`render` is a pure function from (job, spec, events so far) to lines, so the view is tested
without a terminal; `LiveView` redraws those lines in place on a terminal with plain ANSI.

What the events carry: `round_started` (train, retrain/finetune and adapter rounds only) names
how many participants were chosen; `round_completed` carries the round's metrics, failures and
bytes per participant. Individual participants' results are not evented while a round runs, so
the view shows who reported once the round ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from fused.cli.tables import human_bytes, when
from fused.common.domain.records import JobEvent

BAR_WIDTH = 24
MAX_NAMES = 6  # participants named on the "last round" line; the rest are counted
_SELECTED = re.compile(r"(\d+) participants?")


def event_line(event: JobEvent) -> str:
    """One event as one line of text (the non-terminal output and `--wait`)."""
    data = _data(event)
    where = f"{event.phase} {event.round}" if event.phase else ""
    extra = []
    if "accuracy" in data:
        extra.append(f"RA {data['accuracy']:.4f}")
    if data.get("fa") is not None:
        extra.append(f"FA {data['fa']:.4f}")
    if "train_loss" in data:
        extra.append(f"loss {data['train_loss']:.4f}")
    if isinstance(data.get("bytes"), dict):
        extra.append(f"{human_bytes(data['bytes'].get('total', 0))} on the wire")
    tail = f" ({', '.join(extra)})" if extra else ""
    return f"{when(event.time)}  {event.kind:<16} {where:<12} {event.message}{tail}"


def _data(event: JobEvent) -> dict[str, Any]:
    return event.data if isinstance(event.data, dict) else {}


def phase_plan(kind: str, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The phases a job runs and how many rounds each has, from its spec."""
    rounds = int(spec.get("rounds") or 0)
    evals = rounds if spec.get("evaluate_each_round", True) else min(rounds, 1)
    if kind == "train":
        return [("train", rounds), ("evaluate", evals)]
    if kind == "unlearn":
        method = str(spec.get("method") or "fused")
        steps = [("sensitivity", 1), ("adapter", rounds)] if method == "fused" else []
        # Round 0 of evaluate is the base model, measured before unlearning.
        return [*(steps or [(method, rounds)]), ("evaluate", evals + 1)]
    if kind == "evaluate":
        return [("evaluate", 1)]
    return []


@dataclass(frozen=True)
class RoundReport:
    phase: str
    round: int
    reported: list[str]
    failed: dict[str, str]
    bytes: int
    seconds: float


@dataclass
class Progress:
    """What the events so far say about a job."""

    status: str = "pending"
    reason: str = ""
    done: dict[str, set[int]] = field(default_factory=dict)
    phase_bytes: dict[str, int] = field(default_factory=dict)
    current: tuple[str, int] | None = None  # a round started and not yet completed
    selected: int | None = None  # participants chosen for the current round
    last: RoundReport | None = None
    up: int = 0
    down: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest RA, FA, loss


def fold(events: Sequence[JobEvent]) -> Progress:
    progress = Progress()
    for event in events:
        _apply(progress, event, _data(event))
    return progress


def _apply(p: Progress, event: JobEvent, data: dict[str, Any]) -> None:
    if event.kind in ("job_started", "job_resumed"):
        p.status = "running"
        if event.kind == "job_resumed":  # the rounds up to here were done by an earlier run
            p.done.setdefault(event.phase, set()).update(range(1, event.round + 1))
    elif event.kind == "round_started":
        p.current = (event.phase, event.round)
        found = _SELECTED.search(event.message)
        p.selected = int(found.group(1)) if found else None
    elif event.kind == "round_completed":
        _round_completed(p, event, data)
    elif event.kind in ("job_completed", "job_failed"):
        p.status = event.kind.removeprefix("job_")
        p.reason = event.message
        p.current = None
        _take_metrics(p, data, ra=("ra_after", "ra", "accuracy"), fa=("fa_after", "fa"))


def _round_completed(p: Progress, event: JobEvent, data: dict[str, Any]) -> None:
    p.done.setdefault(event.phase, set()).add(event.round)
    wire = _dict(data.get("bytes"))
    up, down = _sum(wire.get("up")), _sum(wire.get("down"))
    total = int(wire.get("total", up + down))
    p.up, p.down = p.up + up, p.down + down
    p.phase_bytes[event.phase] = p.phase_bytes.get(event.phase, 0) + total
    failures = _dict(data.get("failures"))
    reported = _reporters(data, wire, failures)
    seconds = float(data.get("seconds", 0.0))
    failed = {str(k): str(v) for k, v in failures.items()}
    p.last = RoundReport(event.phase, event.round, reported, failed, total, seconds)
    if p.current == (event.phase, event.round):
        p.current, p.selected = None, None
    _take_metrics(p, data, ra=("accuracy",), fa=("fa",))
    if isinstance(data.get("train_loss"), int | float):
        p.metrics["loss"] = float(data["train_loss"])


def _take_metrics(
    p: Progress, data: dict[str, Any], ra: tuple[str, ...], fa: tuple[str, ...]
) -> None:
    for name, keys in (("RA", ra), ("FA", fa)):
        for key in keys:
            if isinstance(data.get(key), int | float):
                p.metrics[name] = float(data[key])
                break


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sum(per_participant: Any) -> int:
    return sum(int(n) for n in per_participant.values()) if isinstance(per_participant, dict) else 0


def _reporters(data: dict[str, Any], wire: dict[str, Any], failures: dict[str, Any]) -> list[str]:
    """Who delivered a result: named outright when the round says, else from evaluation
    results or, failing both, whoever sent bytes in the round and did not fail."""
    if isinstance(data.get("participants"), list):
        return sorted(str(x) for x in data["participants"])
    if isinstance(data.get("per_participant"), dict):
        return sorted(data["per_participant"])
    up = _dict(wire.get("up"))
    return sorted(pid for pid, n in up.items() if n and pid not in failures)


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = width if total <= 0 and done else round(width * min(done, total) / max(total, 1))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render(
    job_id: str,
    kind: str,
    spec: Mapping[str, Any],
    events: Sequence[JobEvent],
    recent: int = 3,
) -> list[str]:
    """The view of a job after `events`: a bar per phase, the round in progress, the last
    completed round, bytes moved, latest metrics and (optionally) the latest events."""
    p = fold(events)
    method = f" ({spec['method']})" if kind == "unlearn" and spec.get("method") else ""
    lines = [f"job {job_id}  {kind}{method}  {p.status}"]
    lines += _bars(phase_plan(kind, spec), p)
    if p.current is not None:
        chosen = f"{p.selected} participants selected" if p.selected is not None else "running"
        lines.append(
            f"  now      {p.current[0]} round {p.current[1]}: {chosen}; "
            "who reported is known when the round ends"
        )
    if p.last is not None:
        lines.append(f"  last     {_last_round(p.last)}")
    lines.append(
        f"  moved    {human_bytes(p.up + p.down)} "
        f"(up {human_bytes(p.up)}, down {human_bytes(p.down)}; counted at each round's end)"
    )
    shown = [f"{k} {p.metrics[k]:.4f}" for k in ("RA", "FA", "loss") if k in p.metrics]
    lines.append("  metrics  " + ("  ".join(shown) if shown else "none yet"))
    if p.status in ("completed", "failed"):
        lines.append(f"  result   {p.status}: {p.reason}")
    if recent > 0:
        lines += [f"  · {e.kind} {e.message}" for e in events[-recent:]]
    return lines


def _bars(plan: list[tuple[str, int]], p: Progress) -> list[str]:
    phases = dict(plan)
    for phase in p.done:  # a phase the spec did not predict still gets a line
        phases.setdefault(phase, 0)
    width = max((len(name) for name in phases), default=0)
    lines = []
    for name, total in phases.items():
        done = len(p.done.get(name, ()))
        count = f"{done}/{max(total, done)}" if total else f"{done}/?"
        moved = p.phase_bytes.get(name)
        tail = f"  {human_bytes(moved)}" if moved else ""
        lines.append(f"  {name:<{width}}  {bar(done, max(total, done))}  {count}{tail}")
    return lines


def _last_round(r: RoundReport) -> str:
    names = ", ".join(r.reported[:MAX_NAMES])
    if len(r.reported) > MAX_NAMES:
        names += f", +{len(r.reported) - MAX_NAMES}"
    failed = f", {len(r.failed)} failed ({', '.join(sorted(r.failed))})" if r.failed else ""
    who = f" ({names})" if names else ""
    return (
        f"{r.phase} round {r.round}: {len(r.reported)} reported{who}{failed}; "
        f"{human_bytes(r.bytes)} in {r.seconds:.2f} s"
    )


class LiveView:
    """Redraws a block of lines in place: cursor up over the previous block, clear, print.
    Lines are clipped to the terminal width, since a wrapped line would throw the count off."""

    def __init__(self, stream: TextIO, columns: int) -> None:
        self._stream = stream
        self._columns = max(columns - 1, 20)
        self._drawn = 0

    def draw(self, lines: Sequence[str]) -> None:
        up = f"\x1b[{self._drawn}A\r" if self._drawn else ""
        body = "".join(line[: self._columns] + "\n" for line in lines)
        self._stream.write(f"{up}\x1b[J{body}")
        self._stream.flush()
        self._drawn = len(lines)
