"""Conversions for the participant protocol: the tasks sent to participants and their outcomes."""

from __future__ import annotations

import dataclasses
from typing import Any

from fused.common.domain.tasks import (
    AdapterRef,
    EvalOutcome,
    ForgetSet,
    ForgetSpec,
    HeldSamples,
    SensitivityOutcome,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    TaskTimings,
    TrainOutcome,
)
from fused.common.domain.train_config import TrainConfig
from fused.proto.v1 import common_pb2, participant_pb2

_TASK_KINDS = {
    TaskKind.TRAIN: participant_pb2.TASK_KIND_TRAIN,
    TaskKind.EVALUATE: participant_pb2.TASK_KIND_EVALUATE,
    TaskKind.SENSITIVITY: participant_pb2.TASK_KIND_SENSITIVITY,
    TaskKind.ADAPTER_TRAIN: participant_pb2.TASK_KIND_ADAPTER_TRAIN,
}
_TASK_KINDS_BACK = {v: k for k, v in _TASK_KINDS.items()}

# Fields with the same name and type in the dataclass and the message, copied as they are;
# the rest (enums, repeated fields, submessages, defaults) are converted by hand.
_TRAIN_FIELDS = ("local_epochs", "lr", "momentum", "weight_decay", "batch_size", "seed")
_FORGET_FIELDS = (
    "paradigm",
    "participant_id",
    "class_label",
    "relabel",
    "trigger_size",
    "trigger_target",
)
_ADAPTER_FIELDS = ("density", "mask_seed", "mask_digest", "values_blob_id")
_TASK_FIELDS = (
    "task_id",
    "job_id",
    "phase",
    "round",
    "model_blob_id",
    "model_name",
    "num_classes",
    "deadline_unix",
    "forget_only",
)


def copy_fields(source: object, names: tuple[str, ...]) -> dict[str, Any]:
    """The named attributes of `source`, as keyword arguments for the other side's constructor."""
    return {name: getattr(source, name) for name in names}


def train_config_to_proto(cfg: TrainConfig) -> common_pb2.TrainConfig:
    return common_pb2.TrainConfig(**copy_fields(cfg, _TRAIN_FIELDS))


def train_config_from_proto(msg: common_pb2.TrainConfig) -> TrainConfig:
    return TrainConfig(**copy_fields(msg, _TRAIN_FIELDS))


def forget_to_proto(forget: ForgetSpec) -> common_pb2.ForgetSpec:
    return common_pb2.ForgetSpec(
        sample_ids=forget.sample_ids, **copy_fields(forget, _FORGET_FIELDS)
    )


def forget_from_proto(msg: common_pb2.ForgetSpec) -> ForgetSpec:
    return ForgetSpec(sample_ids=tuple(msg.sample_ids), **copy_fields(msg, _FORGET_FIELDS))


def adapter_to_proto(ref: AdapterRef) -> participant_pb2.AdapterSpec:
    return participant_pb2.AdapterSpec(
        layers=ref.layers, upload_dtype=ref.upload_dtype, **copy_fields(ref, _ADAPTER_FIELDS)
    )


def adapter_from_proto(msg: participant_pb2.AdapterSpec) -> AdapterRef:
    return AdapterRef(
        layers=tuple(msg.layers),
        upload_dtype=msg.upload_dtype or "float32",
        **copy_fields(msg, _ADAPTER_FIELDS),
    )


def forget_set_to_proto(excluded: ForgetSet) -> common_pb2.ForgetSet:
    samples = [
        common_pb2.HeldSamples(participant_id=h.participant_id, sample_ids=h.sample_ids)
        for h in excluded.samples
    ]
    return common_pb2.ForgetSet(
        participants=excluded.participants, classes=excluded.classes, samples=samples
    )


def forget_set_from_proto(msg: common_pb2.ForgetSet) -> ForgetSet:
    samples = tuple(HeldSamples(h.participant_id, tuple(h.sample_ids)) for h in msg.samples)
    return ForgetSet(tuple(msg.participants), tuple(msg.classes), samples)


def task_to_proto(task: TaskSpec) -> participant_pb2.Task:
    return participant_pb2.Task(
        kind=_TASK_KINDS[task.kind],
        train=train_config_to_proto(task.train),
        forget=forget_to_proto(task.forget) if task.forget else None,
        adapter=adapter_to_proto(task.adapter) if task.adapter else None,
        excluded=forget_set_to_proto(task.excluded),
        **copy_fields(task, _TASK_FIELDS),
    )


def task_from_proto(msg: participant_pb2.Task) -> TaskSpec:
    if msg.kind not in _TASK_KINDS_BACK:
        raise ValueError(f"task {msg.task_id}: unsupported task kind {msg.kind}")
    return TaskSpec(
        kind=_TASK_KINDS_BACK[msg.kind],
        train=train_config_from_proto(msg.train),
        forget=forget_from_proto(msg.forget) if msg.HasField("forget") else None,
        adapter=adapter_from_proto(msg.adapter) if msg.HasField("adapter") else None,
        excluded=forget_set_from_proto(msg.excluded),
        **copy_fields(msg, _TASK_FIELDS),
    )


def outcome_to_proto(outcome: TaskOutcome) -> participant_pb2.PushResultRequest:
    msg = participant_pb2.PushResultRequest(
        participant_id=outcome.participant_id, task_id=outcome.task_id
    )
    # The outcome records' fields are the result messages' fields, name for name.
    if outcome.train is not None:
        msg.train.CopyFrom(participant_pb2.TrainResult(**vars(outcome.train)))
    elif outcome.eval is not None:
        msg.eval.CopyFrom(participant_pb2.EvalResult(**vars(outcome.eval)))
    elif outcome.sensitivity is not None:
        msg.sensitivity.CopyFrom(participant_pb2.SensitivityResult(**vars(outcome.sensitivity)))
    else:
        msg.error.message = outcome.error or "unknown error"
    if outcome.timings is not None:
        msg.timings.CopyFrom(participant_pb2.TaskTimings(**outcome.timings.to_dict()))
    return msg


def timings_from_proto(msg: participant_pb2.PushResultRequest) -> TaskTimings | None:
    """The result's timings, checked; None when the agent sent none."""
    if not msg.HasField("timings"):
        return None
    t = msg.timings
    timings = TaskTimings(t.fetch_s, t.decode_s, t.compute_s, t.encode_s, t.upload_s)
    timings.validate()
    return timings


def outcome_from_proto(msg: participant_pb2.PushResultRequest) -> TaskOutcome:
    """Raises ValueError for a result without an outcome, with mismatched counts or with
    timings that are not finite, non-negative seconds."""
    return dataclasses.replace(_outcome(msg), timings=timings_from_proto(msg))


def _outcome(msg: participant_pb2.PushResultRequest) -> TaskOutcome:
    which = msg.WhichOneof("outcome")
    if which == "train":
        t = msg.train
        train = TrainOutcome(t.update_blob_id, t.num_examples, t.mean_loss, t.seconds)
        return TaskOutcome(msg.participant_id, msg.task_id, train=train)
    if which == "eval":
        e = msg.eval
        if len(e.correct) != len(e.total):
            raise ValueError("eval result: correct and total must have one entry per class")
        ev = EvalOutcome(
            tuple(e.correct),
            tuple(e.total),
            e.loss_sum,
            e.forget_correct,
            e.forget_total,
            tuple(e.test_losses),
            tuple(e.forget_losses),
        )
        return TaskOutcome(msg.participant_id, msg.task_id, eval=ev)
    if which == "sensitivity":
        s = msg.sensitivity
        sens = SensitivityOutcome(
            dict(s.distances), s.num_examples, dict(s.forget_distances), s.forget_examples
        )
        return TaskOutcome(msg.participant_id, msg.task_id, sensitivity=sens)
    if which == "error":
        return TaskOutcome(msg.participant_id, msg.task_id, error=msg.error.message)
    raise ValueError("result has no outcome: set one of train, eval or error")
