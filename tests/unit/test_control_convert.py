"""Round trips of the control protocol's conversions: job specs, jobs with rounds, events,
participants and model versions (the records go through `record_codec`)."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.message import Message

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
from fused.common.domain.round_metrics import (
    AggregateSummary,
    ByteSummary,
    PayloadKind,
    RoundMetrics,
)
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.version_meta import VersionMeta
from fused.common.rpc.control_convert import (
    event_from_proto,
    event_to_proto,
    job_from_proto,
    job_to_proto,
    model_from_proto,
    model_to_proto,
    participant_from_proto,
    participant_to_proto,
    training_spec_from_proto,
    training_spec_to_proto,
    unlearning_spec_from_proto,
    unlearning_spec_to_proto,
)
from tests.unit.test_convert import FORGET, RoundTrip, check_round_trip
from tests.unit.test_training_spec import SPEC, TRAIN_CFG

JOB = JobRecord(
    job_id="job-1",
    kind=JobKind.TRAIN,
    spec=SPEC.to_dict(),
    status=JobStatus.RUNNING,
    phase="train",
    round=2,
    reason="",
    created_at=1_700_000_000.5,
    updated_at=1_700_000_010.25,
    result={"versions": ["v1", "v2"], "accuracy": 0.875, "nested": {"ok": True, "n": None}},
)
ROUNDS = [
    RoundRecord(
        job_id="job-1",
        phase=Phase.TRAIN,
        round=1,
        started_at=1_700_000_001.0,
        finished_at=1_700_000_005.5,
        participants=["p1", "p2"],
        metrics=RoundMetrics(
            seconds=4.5,
            bytes=ByteSummary(up={"p1": 100, "p2": 101}, down={"p1": 300, "p2": 300}),
            aggregate=AggregateSummary(PayloadKind.WEIGHTS, "ab" * 32, 0.693, 64),
        ),
    ),
    RoundRecord(
        job_id="job-1",
        phase=Phase.TRAIN,
        round=2,
        started_at=1_700_000_006.0,
        finished_at=None,  # still running
        participants=[],
        metrics=RoundMetrics(),
    ),
]


def _job_pair(pair: tuple[JobRecord, list[RoundRecord]]) -> Message:
    return job_to_proto(*pair)


def _participant_pair(pair: tuple[ParticipantRecord, bool]) -> Message:
    return participant_to_proto(*pair)


def _model_pair(pair: tuple[ModelVersion, bool]) -> Message:
    return model_to_proto(*pair)


CASES = [
    RoundTrip(
        "unlearning_spec",
        UnlearningSpec(
            forget=FORGET,
            base_version="m-1",
            config=FusedConfig(
                top_k=4, layers=("fc3.weight",), density=0.25, upload_dtype="bfloat16"
            ),
            rounds=3,
            train=TRAIN_CFG,
            min_participants=2,
            round_deadline_s=9.5,
            wait_for_participants_s=1.5,
            seed=5,
            evaluate_each_round=False,
        ),
        unlearning_spec_to_proto,
        unlearning_spec_from_proto,
    ),
    RoundTrip(
        "training_spec",
        SPEC,
        training_spec_to_proto,
        training_spec_from_proto,
    ),
    RoundTrip(
        "training_spec_default",
        TrainingSpec(),
        training_spec_to_proto,
        training_spec_from_proto,
    ),
    RoundTrip("job_with_rounds", (JOB, ROUNDS), _job_pair, job_from_proto),
    RoundTrip(
        "job_completed_no_rounds",
        (
            dataclasses.replace(JOB, status=JobStatus.COMPLETED, reason="done", spec={}, result={}),
            [],
        ),
        _job_pair,
        job_from_proto,
    ),
    RoundTrip(
        "job_event",
        JobEvent(
            job_id="job-1",
            seq=42,
            time=1_700_000_002.125,
            kind="round_completed",
            phase="train",
            round=3,
            message="round 3 done: 2 results",
            data={"participants": ["p1", "p2"], "loss": 0.5},
        ),
        event_to_proto,
        event_from_proto,
    ),
    RoundTrip(
        "job_event_no_data",
        JobEvent("job-2", 1, 1.5, "job_started", "", 0, "started"),
        event_to_proto,
        event_from_proto,
    ),
    RoundTrip(
        "participant_online",
        (
            ParticipantRecord(
                "p1", [10, 0, 7], 17, 5, 1_700_000_000.0, 1_700_000_050.75, {"dataset": "digits"}
            ),
            True,
        ),
        _participant_pair,
        participant_from_proto,
    ),
    RoundTrip(
        "participant_offline_no_dataset",
        (ParticipantRecord("p2", [3], 3, 0, 1.0, 2.0, {}), False),
        _participant_pair,
        participant_from_proto,
    ),
    RoundTrip(
        "model_active",
        (
            ModelVersion(
                version_id="v2",
                job_id="job-1",
                parent_id="v1",
                kind=VersionKind.BASE,
                digest="ef" * 32,
                model="lenet",
                num_params=61_706,
                created_at=1_700_000_100.5,
                meta=VersionMeta("fashion_mnist", 10, accuracy=0.9),
            ),
            True,
        ),
        _model_pair,
        model_from_proto,
    ),
    RoundTrip(
        "model_inactive_root",
        (ModelVersion("v1", None, None, VersionKind.BASE, "00" * 32, "mlp", 10, 3.0), False),
        _model_pair,
        model_from_proto,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_round_trip(case: RoundTrip) -> None:
    check_round_trip(case)


def test_json_fields_are_canonical() -> None:
    """Equal records give byte-identical messages (sorted keys, compact separators)."""
    a = dataclasses.replace(JOB, result={"b": 1, "a": 2})
    b = dataclasses.replace(JOB, result={"a": 2, "b": 1})
    msg = job_to_proto(a)
    assert msg.result_json == '{"a":2,"b":1}'
    assert msg.SerializeToString(deterministic=True) == job_to_proto(b).SerializeToString(
        deterministic=True
    )
