"""Smoke runs of the paper experiment runner (`--quick`), through the real system."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.paper import main
from fused.common.ml.data.sources import DEFAULT_FASHION_MNIST_DIRS

METHODS = {"fused", "fused_random", "finetune", "retrain"}
KEYS = {"ra", "fa", "mia_auc", "rea", "bytes_per_round", "bytes_total", "seconds", "revert_exact"}


def check(out: Path, name: str) -> None:
    results = json.loads((out / f"{name}.json").read_text())
    assert set(results["methods"]) == METHODS
    for method, metrics in results["methods"].items():
        assert set(metrics) >= KEYS, method
        assert 0.0 <= metrics["ra"] <= 1.0 and 0.0 <= metrics["fa"] <= 1.0
        assert 0.0 <= metrics["mia_auc"] <= 1.0
        assert metrics["revert_exact"] is True, method
        assert metrics["bytes_per_round"] > 0 and metrics["bytes_total"] > 0
        assert metrics["curve"][0]["round"] == 0  # evaluated before unlearning
    fused, retrain = results["methods"]["fused"], results["methods"]["retrain"]
    assert fused["bytes_per_round"] < retrain["bytes_per_round"]
    for plot in ("rounds", "bytes"):
        assert (out / f"{name}-{plot}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(("paradigm", "seeds"), [("client", 2), ("class", 1), ("sample", 1)])
def test_quick_run_on_digits(tmp_path: Path, paradigm: str, seeds: int) -> None:
    args = [
        "--seeds",
        str(seeds),
        "--dataset",
        "digits",
        "--paradigm",
        paradigm,
        "--participants",
        "3",
        "--quick",
        "--trigger-size",
        "2",
        "--backdoor-count",
        "40",
        "--out",
        str(tmp_path / "results"),
        "--work",
        str(tmp_path / "work"),
    ]
    assert main(args) == 0
    check(tmp_path / "results", f"digits-{paradigm}")
    results = json.loads((tmp_path / "results" / f"digits-{paradigm}.json").read_text())
    if seeds > 1:  # means over the seeds' runs, with the standard deviation beside them
        assert [r["config"]["seed"] for r in results["seeds"]] == [0, 1]
        ras = [r["methods"]["fused"]["ra"] for r in results["seeds"]]
        assert results["methods"]["fused"]["ra"] == pytest.approx(sum(ras) / 2)
        assert results["spread"]["fused"]["ra"] == pytest.approx(abs(ras[0] - ras[1]) / 2**0.5)


@pytest.mark.skipif(
    not any((d / "train-images-idx3-ubyte.gz").exists() for d in DEFAULT_FASHION_MNIST_DIRS),
    reason="FashionMNIST IDX files are not installed (Debian: dataset-fashion-mnist)",
)
def test_quick_run_on_fashionmnist(tmp_path: Path) -> None:
    args = [
        "--seeds",
        "1",
        "--dataset",
        "fashionmnist",
        "--paradigm",
        "class",
        "--participants",
        "3",
        "--quick",
        "--out",
        str(tmp_path / "results"),
        "--work",
        str(tmp_path / "work"),
    ]
    assert main(args) == 0
    check(tmp_path / "results", "fashionmnist-class")
