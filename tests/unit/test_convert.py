"""Round trips through control_convert and task_convert, and their error cases."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import Message

from fused.common.domain.tasks import (
    AdapterRef,
    EvalOutcome,
    ForgetSpec,
    SensitivityOutcome,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    TaskTimings,
    TrainOutcome,
)
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.task_convert import (
    adapter_from_proto,
    adapter_to_proto,
    forget_from_proto,
    forget_to_proto,
    outcome_from_proto,
    outcome_to_proto,
    task_from_proto,
    task_to_proto,
    train_config_from_proto,
    train_config_to_proto,
)
from fused.proto.v1 import common_pb2, participant_pb2
from tests.unit.test_training_spec import TRAIN_CFG


def _task(kind: TaskKind) -> TaskSpec:
    return TaskSpec(
        task_id=f"task-{kind.value}",
        job_id="job-1",
        phase="train",
        round=7,
        kind=kind,
        model_blob_id="ab" * 32,
        model_name="lenet",
        num_classes=10,
        train=TRAIN_CFG,
        deadline_unix=1_700_000_123.375,
    )


@dataclass(frozen=True)
class RoundTrip:
    name: str
    value: Any
    to_proto: Callable[[Any], Message]
    from_proto: Callable[[Any], Any]


FORGET = ForgetSpec(
    paradigm="samples",
    participant_id="p0",
    sample_ids=(3, 99, 2**40),
    trigger_size=2,
    trigger_target=0,
)
ADAPTER = AdapterRef(("fc3.weight", "conv1.bias"), 0.05, 2**50 + 3, "12" * 32, "34" * 32, "float16")

CASES = [
    RoundTrip("forget", FORGET, forget_to_proto, forget_from_proto),
    RoundTrip(
        "forget_class_relabel",
        ForgetSpec("class", class_label=0, relabel=True),
        forget_to_proto,
        forget_from_proto,
    ),
    RoundTrip("adapter", ADAPTER, adapter_to_proto, adapter_from_proto),
    RoundTrip(
        "task_adapter_with_forget",
        dataclasses.replace(_task(TaskKind.ADAPTER_TRAIN), forget=FORGET, adapter=ADAPTER),
        task_to_proto,
        task_from_proto,
    ),
    RoundTrip(
        "outcome_sensitivity",
        TaskOutcome("p1", "t6", sensitivity=SensitivityOutcome({"fc3.weight": 1.5}, 300)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_eval_forget_counts",
        TaskOutcome("p1", "t7", eval=EvalOutcome((1, 2), (3, 4), 0.5, 7, 9)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "train_config",
        TRAIN_CFG,
        train_config_to_proto,
        train_config_from_proto,
    ),
    RoundTrip(
        "train_config_default",
        TrainConfig(),
        train_config_to_proto,
        train_config_from_proto,
    ),
    RoundTrip("task_train", _task(TaskKind.TRAIN), task_to_proto, task_from_proto),
    RoundTrip("task_evaluate", _task(TaskKind.EVALUATE), task_to_proto, task_from_proto),
    RoundTrip(
        "outcome_train",
        TaskOutcome("p1", "t1", train=TrainOutcome("cd" * 32, 1797, 0.4321, 2.5)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_eval",
        TaskOutcome("p1", "t2", eval=EvalOutcome((1, 0, 5), (2, 0, 9), 3.75)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_eval_empty",  # an all-default submessage must still select the oneof
        TaskOutcome("p1", "t3", eval=EvalOutcome((), (), 0.0)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_train_zero",
        TaskOutcome("p1", "t4", train=TrainOutcome("", 0, 0.0, 0.0)),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_error",
        TaskOutcome("p1", "t5", error="CUDA out of memory"),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_train_timings",
        TaskOutcome(
            "p1",
            "t8",
            train=TrainOutcome("cd" * 32, 10, 0.5, 2.0),
            timings=TaskTimings(0.25, 0.125, 1.5, 0.0625, 0.03125),
        ),
        outcome_to_proto,
        outcome_from_proto,
    ),
    RoundTrip(
        "outcome_eval_timings_zero",  # measured, all stages instant: still present
        TaskOutcome("p1", "t9", eval=EvalOutcome((1,), (2,), 0.5), timings=TaskTimings()),
        outcome_to_proto,
        outcome_from_proto,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_round_trip(case: RoundTrip) -> None:
    check_round_trip(case)


def check_round_trip(case: RoundTrip) -> None:
    """To the message and back, also through the serialized bytes."""
    msg = case.to_proto(case.value)
    assert case.from_proto(msg) == case.value
    wire = msg.SerializeToString()
    parsed = type(msg).FromString(wire)
    assert parsed == msg
    assert case.from_proto(parsed) == case.value


def test_task_kinds_map_to_distinct_proto_values() -> None:
    kinds = {task_to_proto(_task(k)).kind for k in TaskKind}
    assert kinds == {
        participant_pb2.TASK_KIND_TRAIN,
        participant_pb2.TASK_KIND_EVALUATE,
        participant_pb2.TASK_KIND_SENSITIVITY,
        participant_pb2.TASK_KIND_ADAPTER_TRAIN,
    }


def test_outcome_oneof_matches_the_set_field() -> None:
    for case in CASES:
        if isinstance(case.value, TaskOutcome):
            msg = outcome_to_proto(case.value)
            expected = next(
                f
                for f in ("train", "eval", "sensitivity", "error")
                if getattr(case.value, f) is not None
            )
            assert msg.WhichOneof("outcome") == expected, case.name


def test_result_without_outcome_is_rejected() -> None:
    msg = participant_pb2.PushResultRequest(participant_id="p1", task_id="t1")
    with pytest.raises(ValueError, match="no outcome"):
        outcome_from_proto(msg)


def test_eval_with_mismatched_lengths_is_rejected() -> None:
    msg = participant_pb2.PushResultRequest(
        participant_id="p1",
        task_id="t1",
        eval=participant_pb2.EvalResult(correct=[1, 2, 3], total=[4, 5], loss_sum=1.0),
    )
    with pytest.raises(ValueError, match="correct and total must have one entry per class"):
        outcome_from_proto(msg)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_timings_that_are_not_seconds_are_rejected(bad: float) -> None:
    outcome = TaskOutcome("p1", "t1", error="x", timings=TaskTimings(compute_s=1.0))
    msg = outcome_to_proto(outcome)
    msg.timings.upload_s = bad
    with pytest.raises(ValueError, match="upload_s must be finite and >= 0"):
        outcome_from_proto(msg)


def test_task_with_unspecified_kind_is_rejected() -> None:
    msg = task_to_proto(_task(TaskKind.TRAIN))
    msg.kind = participant_pb2.TASK_KIND_UNSPECIFIED
    with pytest.raises(ValueError, match=r"task task-train: unsupported task kind 0"):
        task_from_proto(msg)


def test_task_with_unknown_kind_number_is_rejected() -> None:
    # proto3 enums are open: a newer coordinator may send a kind this agent does not know.
    wire = task_to_proto(_task(TaskKind.TRAIN)).SerializeToString() + b"\x28\x63"
    msg = participant_pb2.Task.FromString(wire)  # field 5 (kind) = 99, last one wins
    assert msg.kind == 99
    with pytest.raises(ValueError, match="unsupported task kind 99"):
        task_from_proto(msg)


def test_train_config_proto_field_types() -> None:
    msg = train_config_to_proto(TRAIN_CFG)
    assert isinstance(msg, common_pb2.TrainConfig)
    assert msg.seed == 2**40 + 7
