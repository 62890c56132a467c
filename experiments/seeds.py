"""What every experiment records about its runs: the commit it ran at, and several seeds of
one experiment as one result (every figure the mean over seeds, with the standard deviation
beside it).

`combine` keeps the single-run layout (`methods`, `original`: numbers are means, a flag holds
only if it held on every seed, anything else is the first seed's) so tables and checks read a
combined result like a single one, and adds `spread` (standard deviations) and `seeds` (the
runs themselves).
"""

from __future__ import annotations

import statistics
import subprocess
from typing import Any


def _mean(values: list[Any]) -> Any:
    if all(isinstance(v, bool) for v in values):
        return all(values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return statistics.fmean(values)
    return values[0]


def _std(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values) or len(values) < 2:
        return None
    return statistics.stdev(numbers)


def _fold(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    means = {k: _mean([r[k] for r in runs]) for k in keys}
    spread = {k: s for k in keys if (s := _std([r[k] for r in runs])) is not None}
    return means, spread


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the runs of several seeds (the first run's config, with the seeds)."""
    if len(runs) == 1:
        return runs[0]
    original, original_spread = _fold([r["original"] for r in runs])
    methods: dict[str, Any] = {}
    spread: dict[str, Any] = {"original": original_spread}
    for name in runs[0]["methods"]:
        methods[name], spread[name] = _fold([r["methods"][name] for r in runs])
    config = {**runs[0]["config"], "seeds": [r["config"]["seed"] for r in runs]}
    return {
        "config": config,
        "original": original,
        "methods": methods,
        "spread": spread,
        "seeds": runs,
    }


def git_commit() -> str:
    """The checkout's short commit id ("" outside a git checkout)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()
