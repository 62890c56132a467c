"""Mean and standard deviation over seeds of `experiments.ledger_sequence`'s figures, and the
text table it prints."""

from __future__ import annotations

import statistics
from typing import Any

VERSIONS = ("R1", "R2", "R3")
METRICS = ("ra", "fa_R1", "fa_R2", "fa_R3", "bytes_per_round", "seconds")


def stats(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (0 for one value) of the values that exist."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": statistics.fmean(xs), "std": std, "n": len(xs)}


def _ratio(fedavg: float, unlearning: float) -> float | None:
    return fedavg / unlearning if unlearning > 0 else None


def summarize(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runs = list(seeds.values())
    base_metrics = ("ra", "fa_R1", "fa_R2", "fa_R3")
    out: dict[str, Any] = {
        "fedavg": {
            "bytes_per_round": stats([r["fedavg"]["bytes_per_round"] for r in runs]),
            "seconds": stats([r["fedavg"]["seconds"] for r in runs]),
        },
        "base": {m: stats([r["base"][m] for r in runs]) for m in base_metrics},
    }
    for strategy in ("stack", "union"):
        table: dict[str, Any] = {}
        for version in VERSIONS:
            rows = [r["strategies"][strategy][version] for r in runs]
            figures = {m: stats([row[m] for row in rows]) for m in METRICS}
            figures["fedavg_over_unlearning_bytes"] = stats(
                [
                    _ratio(r["fedavg"]["bytes_per_round"], row["bytes_per_round"])
                    for r, row in zip(runs, rows, strict=True)
                ]
            )
            table[version] = figures
        table["total_seconds"] = stats(
            [sum(r["strategies"][strategy][v]["seconds"] for v in VERSIONS) for r in runs]
        )
        out[strategy] = table
    checks = sorted({k for r in runs for k in r["exactness"]})
    out["exactness"] = {
        k: f"{sum(bool(r['exactness'].get(k)) for r in runs)}/{len(runs)}" for k in checks
    }
    return out


def _fmt(s: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean'] / scale:.{digits}f}±{s['std'] / scale:.{digits}f}"


def render(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per strategy and version (mean±std over seeds)."""
    head = ["strategy", "version", "RA", "FA R1", "FA R2", "FA R3", "kB/round", "s", "FedAvg/unl"]
    rows = [head]
    base = summary["base"]
    fedavg = summary["fedavg"]
    rows.append(
        [
            "-",
            "base",
            *(_fmt(base[m]) for m in ("ra", "fa_R1", "fa_R2", "fa_R3")),
            _fmt(fedavg["bytes_per_round"], 1000, 1),
            _fmt(fedavg["seconds"], 1, 1),
            "1",
        ]
    )
    for strategy in ("stack", "union"):
        for version in VERSIONS:
            f = summary[strategy][version]
            rows.append(
                [
                    strategy,
                    version,
                    *(_fmt(f[m]) for m in ("ra", "fa_R1", "fa_R2", "fa_R3")),
                    _fmt(f["bytes_per_round"], 1000, 1),
                    _fmt(f["seconds"], 1, 1),
                    _fmt(f["fedavg_over_unlearning_bytes"], 1, 1),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    exact = ", ".join(f"{k} {v}" for k, v in summary["exactness"].items())
    lines.append(f"exactness (seeds passing): {exact}")
    return "\n".join(lines)
