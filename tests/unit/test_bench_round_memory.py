"""bench.round_memory on a small model: three processes, the streamed aggregate the same in
both arrival orders and equal to the held path's."""

from __future__ import annotations

import json

import pytest

from bench.round_memory import main


def test_round_memory_reports_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "mlp", "--participants", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    for variant in ("held", "streamed", "streamed_reversed"):
        assert report[variant]["peak_rss_mib"] >= report[variant]["rss_before_mib"] > 0
    assert report["orders_identical"] is True
    assert report["streamed_vs_held"]["max_rel_diff"] < 1e-6
    assert report["streamed_vs_held"]["elements"] == report["parameters"]
