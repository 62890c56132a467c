"""fusedctl status's round table (cli/listings.py): the slowest participant's timings."""

from __future__ import annotations

from fused.cli.listings import ROUND_COLUMNS, round_row
from fused.common.domain.records import Phase, RoundRecord
from fused.common.domain.round_metrics import RoundMetrics
from fused.common.domain.tasks import TaskTimings


def test_a_round_shows_its_slowest_participants_compute_and_transfers() -> None:
    timings = {
        "p0": TaskTimings(0.5, 0.0, 1.0, 0.0, 0.25),  # 1.75 s in all
        "p1": TaskTimings(0.0, 0.1, 3.25, 0.0, 0.5),  # the slowest: 3.85 s
    }
    record = RoundRecord(
        "j", Phase.ADAPTER, 2, 0.0, 5.0, ["p0", "p1"], RoundMetrics(4.5, timings=timings)
    )
    row = dict(zip(ROUND_COLUMNS, round_row(record), strict=True))
    assert (row["s"], row["compute s"], row["xfer s"]) == ("4.5", "3.25", "0.50")


def test_a_round_without_timings_shows_dashes() -> None:
    record = RoundRecord("j", Phase.TRAIN, 1, 0.0, 1.0, ["p0"], RoundMetrics(1.0))
    row = dict(zip(ROUND_COLUMNS, round_row(record), strict=True))
    assert (row["compute s"], row["xfer s"]) == ("-", "-")
