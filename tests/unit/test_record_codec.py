"""The one record <-> JSON conversion: every persisted record converts field by field, enum
values are checked, absent fields take their defaults, and conversions never alias."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from fused.common.domain.record_codec import field_codecs, from_json, normalized, to_json
from fused.common.domain.records import (
    JobEvent,
    JobKind,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    Phase,
    RoundRecord,
    VersionKind,
)
from fused.common.domain.round_metrics import AggregateSummary, PayloadKind, RoundMetrics
from fused.common.domain.version_meta import VersionMeta

RECORDS: list[Any] = [
    ParticipantRecord("p0", [3, 4], 7, 2, 1.0, 2.0, {"dataset": "digits"}),
    JobRecord("j1", JobKind.UNLEARN, {"rounds": 3}, JobStatus.RUNNING, "adapter", 2, "", 1.0, 2.0),
    RoundRecord(
        "j1",
        Phase.ADAPTER,
        2,
        3.0,
        None,
        ["p0"],
        RoundMetrics(seconds=1.5, aggregate=AggregateSummary(PayloadKind.ADAPTER, "ab" * 32, 0.3)),
    ),
    ModelVersion(
        "m1", "j1", None, VersionKind.BASE, "cd" * 32, "mlp", 10, 4.0, VersionMeta("d", 3)
    ),
    JobEvent("j1", 1, 5.0, "round_completed", "adapter", 2, "done", {"seconds": 1.5}),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_json(record: Any) -> None:
    stored = json.loads(json.dumps(to_json(record)))
    assert from_json(type(record), stored) == record
    assert [c.name for c in field_codecs(type(record))] == [
        f.name for f in dataclasses.fields(record)
    ]


def test_enums_store_their_values_and_refuse_others() -> None:
    job = RECORDS[1]
    assert to_json(job)["kind"] == "unlearn" and to_json(job)["status"] == "running"
    with pytest.raises(ValueError, match="not-a-kind"):
        to_json(dataclasses.replace(job, kind="not-a-kind"))
    with pytest.raises(ValueError):
        from_json(JobRecord, {**to_json(job), "status": "paused"})


def test_absent_fields_take_defaults_and_missing_required_fields_fail() -> None:
    stored = to_json(RECORDS[2])
    del stored["metrics"]
    assert from_json(RoundRecord, stored).metrics == RoundMetrics()
    del stored["phase"]
    with pytest.raises(TypeError, match="phase"):
        from_json(RoundRecord, stored)


def test_normalized_copies_share_nothing() -> None:
    record = RECORDS[0]
    copy = normalized(record)
    copy.info["dataset"] = "other"
    copy.class_counts.append(9)
    assert record == RECORDS[0] and copy != record


def test_a_field_type_without_conversion_is_refused() -> None:
    @dataclasses.dataclass
    class Odd:
        when: complex

    with pytest.raises(TypeError, match="'when'"):
        field_codecs(Odd)
