"""A round short of its quorum fails the job with a reason that names why, bounded in size."""

from __future__ import annotations

import pytest

from fused.common.domain.records import Phase
from fused.coordinator.engine.context import JobFailed
from fused.coordinator.engine.rounds import QUOTED_FAILURES, RoundResult, check_quorum


def test_a_full_quorum_passes() -> None:
    check_quorum(RoundResult(failures={"p9": "late"}), 0, Phase.TRAIN, 1)


def test_the_reason_quotes_each_failure_when_few() -> None:
    result: RoundResult[object] = RoundResult(failures={"p1": "late", "p0": "refused"})
    with pytest.raises(JobFailed) as failed:
        check_quorum(result, 2, Phase.ADAPTER, 3)
    assert str(failed.value) == "adapter round 3: 0 results, 2 required (p0: refused; p1: late)"


def test_the_reason_stays_bounded_with_a_thousand_failures() -> None:
    failures = {f"p{i:04d}": "x" * 512 for i in range(1000)}
    with pytest.raises(JobFailed) as failed:
        check_quorum(RoundResult(failures=failures), 1, Phase.TRAIN, 1)
    reason = str(failed.value)
    assert reason.count("x" * 512) == QUOTED_FAILURES
    assert reason.endswith(f"and {1000 - QUOTED_FAILURES} more (see the round's failures))")
    assert len(reason) < (QUOTED_FAILURES + 1) * 530
