"""Per-participant task timings in a round's record (common/domain/round_metrics.py)."""

from __future__ import annotations

import json

from fused.common.domain.record_codec import from_json, to_json
from fused.common.domain.records import Phase, RoundRecord
from fused.common.domain.round_metrics import RoundMetrics, task_timings
from fused.common.domain.tasks import TaskOutcome, TaskTimings, TrainOutcome

FAST = TaskTimings(0.0, 0.01, 0.5, 0.002, 0.003)
SLOW = TaskTimings(1.5, 0.02, 2.5, 0.004, 0.25)


def test_timings_round_trip_through_the_stored_json() -> None:
    metrics = RoundMetrics(seconds=3.0, timings={"p1": SLOW, "p0": FAST})
    record = RoundRecord("j1", Phase.ADAPTER, 1, 1.0, 4.0, ["p0", "p1"], metrics)
    stored = json.loads(json.dumps(to_json(record)))
    assert from_json(RoundRecord, stored).metrics == metrics
    as_dict = metrics.to_dict()
    assert list(as_dict["timings"]) == ["p0", "p1"]
    assert as_dict["timings"]["p1"] == {
        "fetch_s": 1.5,
        "decode_s": 0.02,
        "compute_s": 2.5,
        "encode_s": 0.004,
        "upload_s": 0.25,
    }


def test_a_round_without_timings_stores_no_key_and_reads_back_empty() -> None:
    assert "timings" not in RoundMetrics(seconds=1.0).to_dict()
    assert RoundMetrics.from_dict({"seconds": 1.0, "failures": {}}).timings == {}


def test_task_timings_keeps_the_outcomes_that_carry_some() -> None:
    train = TrainOutcome("ab" * 32, 10, 0.5, 1.0)
    outcomes = {
        "p2": TaskOutcome("p2", "t2", train=train, timings=SLOW),
        "p0": TaskOutcome("p0", "t0", train=train),  # an agent that measured nothing
        "p1": TaskOutcome("p1", "t1", train=train, timings=FAST),
    }
    found = task_timings(outcomes)
    assert found == {"p1": FAST, "p2": SLOW} and list(found) == ["p1", "p2"]
    assert SLOW.total_s == 1.5 + 0.02 + 2.5 + 0.004 + 0.25
