"""PNG plots of an experiment's results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """RA and FA per unlearning round for every method (federated evaluation)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, method in results["methods"].items():
        curve = method["curve"]
        rounds = [point["round"] for point in curve]
        axes[0].plot(rounds, [point["ra"] for point in curve], marker="o", label=name)
        axes[1].plot(rounds, [point["fa"] for point in curve], marker="o", label=name)
    fa_label = "attack success rate" if results["config"]["paradigm"] == "sample" else "FA"
    for ax, title in zip(axes, ("RA (remaining accuracy)", fa_label), strict=True):
        ax.set_xlabel("round (0 = before unlearning)")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(f"{results['config']['dataset']} / {results['config']['paradigm']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes(results: dict[str, Any], path: Path) -> None:
    """Bytes one participant moves per round, both directions, per method (log scale)."""
    names = list(results["methods"])
    values = [results["methods"][n]["bytes_per_round"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, values, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_ylabel("bytes per participant per round")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value / 1024:.1f} KiB",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_title(f"{results['config']['dataset']} / {results['config']['paradigm']}: traffic")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
