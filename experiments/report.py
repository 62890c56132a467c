"""Markdown tables and goal checks from results/<dataset>-<paradigm>.json: figures are means
over the seeds run, with the standard deviation beside them; goals are judged on the means.

python -m experiments.report results/fashionmnist-*.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The paper's main table (FashionMNIST/LeNet, alpha=1.0), most likely measured on MNIST.
PAPER = {
    "client": {"retrain": (0.99, 0.00, 0.85, 210, "177K"), "fused": (0.99, 0.00, 0.68, 159, "11K")},
    "class": {"retrain": (0.99, 0.00, 0.27, 214, "177K"), "fused": (0.99, 0.00, 0.99, 82, "11K")},
}
ROWS = [
    ("RA", "ra", "{:.4f}"),
    ("FA", "fa", "{:.4f}"),
    ("MIA AUC", "mia_auc", "{:.3f}"),
    ("ReA", "rea", "{:.4f}"),
    ("bytes / participant / round", "bytes_per_round", "{:,.0f}"),
    ("bytes / participant, job", "bytes_total", "{:,.0f}"),
    ("seconds", "seconds", "{:.1f}"),
    ("rounds", "rounds", "{:.1f}"),
    ("revert exact", "revert_exact", "{}"),
]


def table(results: dict[str, Any]) -> str:
    methods = results["methods"]
    names = list(methods)
    paradigm = results["config"]["paradigm"]
    fa_name = "FA (attack success)" if paradigm == "sample" else "FA"
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    spread = results.get("spread", {})
    for label, key, fmt in ROWS:
        label = fa_name if key == "fa" else label
        cells = [_cell(fmt, methods[n][key], spread.get(n, {}).get(key)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    layers = {n: ", ".join(methods[n]["critical_layers"]) for n in names if "fused" in n}
    lines.append("| adapted tensors | " + " | ".join(layers.get(n, "-") for n in names) + " |")
    return "\n".join(lines)


def _cell(fmt: str, value: Any, std: float | None) -> str:
    """A figure, with its standard deviation over seeds when there were several."""
    return fmt.format(value) + (f" ± {fmt.format(std)}" if std is not None else "")


def paper_table(paradigm: str) -> str:
    rows = PAPER.get(paradigm)
    if not rows:
        return "_The paper reports no numbers for this setting._"
    lines = ["| method | RA | FA | MIA | Comp (s) | Comm |", "|---|---|---|---|---|---|"]
    for method, (ra, fa, mia, comp, comm) in rows.items():
        lines.append(f"| {method} | {ra} | {fa} | {mia} | {comp} | {comm} |")
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    m = results["methods"]
    fused, retrain, rand = m["fused"], m["retrain"], m["fused_random"]
    paradigm = results["config"]["paradigm"]
    spread = results.get("spread", {})
    out: list[tuple[str, bool, str]] = []
    ra_ok = fused["ra"] >= retrain["ra"] - 0.02
    ra_text = f"FUSED RA {fused['ra']:.4f} vs Retrain {retrain['ra']:.4f} - 0.02"
    if paradigm == "client":
        out.append(("RA", ra_ok, ra_text))
        ok = fused["fa"] <= retrain["fa"] + 0.03
        out.append(("FA", ok, f"FUSED FA {fused['fa']:.4f} vs Retrain {retrain['fa']:.4f} + 0.03"))
    elif paradigm == "class":
        out.append(("FA", fused["fa"] <= 0.02, f"FUSED FA {fused['fa']:.4f} <= 0.02"))
        out.append(("RA", ra_ok, ra_text))
    else:
        ok = fused["fa"] <= retrain["fa"] + 0.05
        text = f"attack success: FUSED {fused['fa']:.4f} vs Retrain {retrain['fa']:.4f} + 0.05"
        out.append(("FA", ok, text))
        out.append(("RA", ra_ok, ra_text))
    mia_gap = abs(fused["mia_auc"] - retrain["mia_auc"])
    out.append(
        (
            "MIA",
            mia_gap <= 0.05,
            f"FUSED MIA AUC {fused['mia_auc']:.3f} vs Retrain {retrain['mia_auc']:.3f} "
            "(within 0.05)",
        )
    )
    ratio = retrain["bytes_per_round"] / fused["bytes_per_round"]
    out.append(("bytes", ratio >= 15, f"Retrain/FUSED bytes per round = {ratio:.1f} (>= 15)"))
    speed = retrain["seconds"] / fused["seconds"]
    out.append(("time", speed >= 2, f"Retrain/FUSED seconds = {speed:.2f} (>= 2)"))
    sds = [spread.get(n, {}).get("ra") for n in ("fused", "fused_random")]
    noise = max((sd for sd in sds if sd is not None), default=None)
    versus = f"RA with the selection rule {fused['ra']:.4f} vs random layers of the same budget "
    if noise is None:
        out.append(("selection vs random", False, versus + f"{rand['ra']:.4f}: one seed, no sd"))
    else:
        beats = fused["ra"] - rand["ra"] > noise
        text = versus + f"{rand['ra']:.4f} (must beat it by more than the larger sd, {noise:.4f})"
        out.append(("selection vs random", beats, text))
    exact = all(v["revert_exact"] for v in m.values())
    out.append(("revert exact", exact, "every method's revert and reapply hashes matched"))
    return out


def render(paths: Sequence[Path]) -> str:
    parts = []
    for path in paths:
        results = json.loads(path.read_text())
        cfg = results["config"]
        parts.append(f"### {cfg['dataset']} / {cfg['paradigm']}\n")
        orig, sd = results["original"], results.get("spread", {}).get("original", {})
        seeds = cfg.get("seeds", [cfg["seed"]])
        parts.append(
            f"Original model (FedAvg, {cfg['budget']['train_rounds']} rounds; seeds "
            f"{', '.join(map(str, seeds))}; mean ± standard deviation): "
            f"RA {_cell('{:.4f}', orig['ra'], sd.get('ra'))}, "
            f"FA {_cell('{:.4f}', orig['fa'], sd.get('fa'))}, "
            f"MIA AUC {_cell('{:.3f}', orig['mia_auc'], sd.get('mia_auc'))}, "
            f"{orig['seconds']:.0f} s.\n"
        )
        parts.append(table(results) + "\n")
        parts.append("Paper (reported):\n\n" + paper_table(cfg["paradigm"]) + "\n")
        parts.append("Goals:\n")
        for name, ok, text in goals(results):
            parts.append(f"- {'met' if ok else '**not met**'}: {name}: {text}")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render([Path(p) for p in sys.argv[1:]]))
