"""`fusedctl report`: a job as Markdown with PNG plots (accuracy per round, bytes per round).

matplotlib is imported only here, and only when a report is made, so fusedctl starts fast
and works without it for everything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fused.cli.tables import human_bytes
from fused.common.domain.records import JobRecord, Phase, RoundRecord

ACCURACY_PNG = "accuracy.png"
BYTES_PNG = "bytes.png"


class MissingPlotting(Exception):
    """matplotlib is not installed."""


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingPlotting(
            "`fusedctl report` draws its plots with matplotlib, which is not installed: "
            "pip install matplotlib (or the dev extras: pip install -e '.[dev]')"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class EvalPoint:
    round: int
    ra: float
    fa: float | None


@dataclass(frozen=True)
class RoundBytes:
    phase: str
    round: int
    up: int
    down: int


def accuracy_series(rounds: Sequence[RoundRecord]) -> list[EvalPoint]:
    """RA and FA of each evaluation round, by round (round 0: before unlearning)."""
    points = [
        EvalPoint(r.round, e.accuracy, e.fa)
        for r in rounds
        if r.phase == Phase.EVALUATE and (e := r.metrics.evaluation) is not None
    ]
    return sorted(points, key=lambda p: p.round)


def bytes_series(rounds: Sequence[RoundRecord]) -> dict[str, list[RoundBytes]]:
    """Bytes up (to the coordinator) and down per round, grouped by phase in run order."""
    by_phase: dict[str, list[RoundBytes]] = {}
    for r in rounds:
        up, down = _directions(r)
        by_phase.setdefault(r.phase, []).append(RoundBytes(r.phase, r.round, up, down))
    return {phase: sorted(rows, key=lambda b: b.round) for phase, rows in by_phase.items()}


def _directions(r: RoundRecord) -> tuple[int, int]:
    counted = r.metrics.bytes
    if counted is None:
        return 0, 0
    return sum(counted.up.values()), sum(counted.down.values())


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def plot_accuracy(plt: ModuleType, points: Sequence[EvalPoint], path: Path, job_id: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p.round for p in points]
    ax.plot(xs, [p.ra for p in points], marker="o", label="RA (remaining test data)")
    fa = [(p.round, p.fa) for p in points if p.fa is not None]
    if fa:
        ax.plot([x for x, _ in fa], [y for _, y in fa], marker="s", label="FA (forgotten data)")
    xlabel = "round (0: before unlearning)" if 0 in xs else "round"
    ax.set(xlabel=xlabel, ylabel="accuracy", ylim=(0, 1.02), title=f"{job_id}: accuracy")
    ax.set_xticks(sorted(set(xs)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bytes(
    plt: ModuleType, series: dict[str, list[RoundBytes]], path: Path, job_id: str
) -> None:
    """One panel per phase; per round a bar up and a bar down, in KiB."""
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), squeeze=False)
    for ax, (phase, rows) in zip(axes[:, 0], series.items(), strict=True):
        xs = list(range(len(rows)))
        ax.bar([x - 0.2 for x in xs], [b.up / 1024 for b in rows], 0.4, label="up")
        ax.bar([x + 0.2 for x in xs], [b.down / 1024 for b in rows], 0.4, label="down")
        ax.set_xticks(xs, [str(b.round) for b in rows])
        ax.set(ylabel="KiB", title=f"{phase}: bytes per round")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[-1, 0].set_xlabel("round")
    fig.suptitle(job_id)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    plt: ModuleType, job: JobRecord, rounds: Sequence[RoundRecord], out: Path
) -> list[Path]:
    """DIR/report.md and the PNGs it shows; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    points = accuracy_series(rounds)
    if points:
        plot_accuracy(plt, points, out / ACCURACY_PNG, job.job_id)
        plots.append(ACCURACY_PNG)
    series = bytes_series(rounds)
    if series:
        plot_bytes(plt, series, out / BYTES_PNG, job.job_id)
        plots.append(BYTES_PNG)
    (out / "report.md").write_text(markdown(job, rounds, plots))
    return [out / "report.md", *(out / name for name in plots)]


def markdown(job: JobRecord, rounds: Sequence[RoundRecord], plots: Sequence[str]) -> str:
    parts = [
        f"# Job {job.job_id}\n",
        _summary(job, rounds),
        "## Result\n\n" + _result(job),
        _plots(plots),
        "## Rounds\n\n" + _round_table(rounds),
        "## Spec\n\n```json\n" + json.dumps(job.spec, indent=2, sort_keys=True) + "\n```\n",
    ]
    return "\n".join(p for p in parts if p)


def _summary(job: JobRecord, rounds: Sequence[RoundRecord]) -> str:
    series = bytes_series(rounds)
    up = sum(b.up for rows in series.values() for b in rows)
    down = sum(b.down for rows in series.values() for b in rows)
    counts = ", ".join(f"{phase} {len(rows)}" for phase, rows in series.items())
    rows = [
        ("kind", job.kind),
        ("status", job.status.value),
        ("reason", job.reason or "-"),
        ("created", _utc(job.created_at)),
        ("last update", _utc(job.updated_at)),
        ("wall time", f"{job.updated_at - job.created_at:.1f} s"),
        ("rounds", f"{len(rounds)} ({counts})" if rounds else "0"),
        ("bytes moved", f"{human_bytes(up + down)} (up {up} B, down {down} B)"),
    ]
    return _table(["", ""], [list(r) for r in rows])


_RESULT_FIELDS = (
    ("version_id", "new model version"),
    ("base_version", "unlearned from"),
    ("method", "method"),
    ("model", "model"),
    ("accuracy", "test accuracy (RA)"),
    ("ra", "RA"),
    ("fa", "FA"),
    ("critical_layers", "adapted tensors"),
    ("adapter_params", "adapter parameters"),
    ("model_params", "model parameters"),
    ("seconds", "seconds"),
)


def _result(job: JobRecord) -> str:
    result = job.result or {}
    lines = []
    for name in ("ra", "fa"):
        if f"{name}_before" in result:
            before, after = _num(result[f"{name}_before"]), _num(result.get(f"{name}_after"))
            lines.append(f"- {name.upper()} before → after: {before} → {after}")
    for key, label in _RESULT_FIELDS:
        if key in result:
            lines.append(f"- {label}: {_value(result[key])}")
    return "\n".join(lines) + "\n" if lines else "No result (the job did not complete).\n"


def _plots(plots: Sequence[str]) -> str:
    titles = {ACCURACY_PNG: "Accuracy per round", BYTES_PNG: "Bytes per round per phase"}
    return "\n".join(f"## {titles[p]}\n\n![{titles[p]}]({p})\n" for p in plots)


def _round_table(rounds: Sequence[RoundRecord]) -> str:
    if not rounds:
        return "No rounds recorded.\n"
    headers = ["phase", "round", "participants", "RA", "FA", "loss", "up B", "down B"]
    headers += ["seconds", "failures"]
    rows = []
    for r in rounds:
        m = r.metrics
        up, down = _directions(r)
        e, a = m.evaluation, m.aggregate
        rows.append(
            [
                r.phase,
                str(r.round),
                " ".join(r.participants) or "-",
                _num(e.accuracy if e else None),
                _num(e.fa if e else None),
                _num(a.train_loss if a else None),
                str(up),
                str(down),
                f"{m.seconds:.2f}",
                "; ".join(f"{p}: {why}" for p, why in sorted(m.failures.items())) or "-",
            ]
        )
    return _table(headers, rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        escaped = (str(c).replace("|", "\\|").replace("\n", " ") for c in cells)
        return "| " + " | ".join(escaped) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)]) + "\n"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value) or "-"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"
