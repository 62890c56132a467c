"""Symmetric conversions between protobuf messages and the project's plain dataclasses."""

from __future__ import annotations

import json
from typing import Any

from fused.common.domain.records import (
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.common.domain.specs import TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import (
    AdapterRef,
    EvalOutcome,
    ForgetSpec,
    SensitivityOutcome,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    TrainOutcome,
)
from fused.common.domain.train_config import TrainConfig
from fused.proto.v1 import common_pb2, control_pb2, participant_pb2

_TASK_KINDS = {
    TaskKind.TRAIN: participant_pb2.TASK_KIND_TRAIN,
    TaskKind.EVALUATE: participant_pb2.TASK_KIND_EVALUATE,
    TaskKind.SENSITIVITY: participant_pb2.TASK_KIND_SENSITIVITY,
    TaskKind.ADAPTER_TRAIN: participant_pb2.TASK_KIND_ADAPTER_TRAIN,
}
_TASK_KINDS_BACK = {v: k for k, v in _TASK_KINDS.items()}


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    return json.loads(text) if text else {}


def train_config_to_proto(cfg: TrainConfig) -> common_pb2.TrainConfig:
    return common_pb2.TrainConfig(
        local_epochs=cfg.local_epochs,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )


def train_config_from_proto(msg: common_pb2.TrainConfig) -> TrainConfig:
    return TrainConfig(
        local_epochs=msg.local_epochs,
        lr=msg.lr,
        momentum=msg.momentum,
        weight_decay=msg.weight_decay,
        batch_size=msg.batch_size,
        seed=msg.seed,
    )


def training_spec_to_proto(spec: TrainingSpec) -> control_pb2.TrainingSpec:
    return control_pb2.TrainingSpec(
        model=spec.model,
        rounds=spec.rounds,
        train=train_config_to_proto(spec.train),
        participants_per_round=spec.participants_per_round,
        min_participants=spec.min_participants,
        round_deadline_s=spec.round_deadline_s,
        seed=spec.seed,
        init_version=spec.init_version,
        wait_for_participants_s=spec.wait_for_participants_s,
        evaluate_each_round=spec.evaluate_each_round,
    )


def training_spec_from_proto(msg: control_pb2.TrainingSpec) -> TrainingSpec:
    return TrainingSpec(
        model=msg.model,
        rounds=msg.rounds,
        train=train_config_from_proto(msg.train),
        participants_per_round=msg.participants_per_round,
        min_participants=msg.min_participants,
        round_deadline_s=msg.round_deadline_s,
        seed=msg.seed,
        init_version=msg.init_version,
        wait_for_participants_s=msg.wait_for_participants_s,
        evaluate_each_round=msg.evaluate_each_round,
    )


def forget_to_proto(forget: ForgetSpec) -> common_pb2.ForgetSpec:
    return common_pb2.ForgetSpec(
        paradigm=forget.paradigm,
        participant_id=forget.participant_id,
        class_label=forget.class_label,
        sample_ids=forget.sample_ids,
        relabel=forget.relabel,
        trigger_size=forget.trigger_size,
        trigger_target=forget.trigger_target,
    )


def forget_from_proto(msg: common_pb2.ForgetSpec) -> ForgetSpec:
    return ForgetSpec(
        paradigm=msg.paradigm,
        participant_id=msg.participant_id,
        class_label=msg.class_label,
        sample_ids=tuple(msg.sample_ids),
        relabel=msg.relabel,
        trigger_size=msg.trigger_size,
        trigger_target=msg.trigger_target,
    )


def adapter_to_proto(ref: AdapterRef) -> participant_pb2.AdapterSpec:
    return participant_pb2.AdapterSpec(
        layers=ref.layers,
        density=ref.density,
        mask_seed=ref.mask_seed,
        mask_digest=ref.mask_digest,
        values_blob_id=ref.values_blob_id,
        upload_dtype=ref.upload_dtype,
    )


def adapter_from_proto(msg: participant_pb2.AdapterSpec) -> AdapterRef:
    return AdapterRef(
        layers=tuple(msg.layers),
        density=msg.density,
        mask_seed=msg.mask_seed,
        mask_digest=msg.mask_digest,
        values_blob_id=msg.values_blob_id,
        upload_dtype=msg.upload_dtype or "float32",
    )


def unlearning_spec_to_proto(spec: UnlearningSpec) -> control_pb2.UnlearningSpec:
    return control_pb2.UnlearningSpec(
        base_version=spec.base_version,
        forget=forget_to_proto(spec.forget),
        method=spec.method,
        rounds=spec.rounds,
        train=train_config_to_proto(spec.train),
        top_k=spec.top_k,
        layers=spec.layers,
        density=spec.density,
        min_participants=spec.min_participants,
        round_deadline_s=spec.round_deadline_s,
        wait_for_participants_s=spec.wait_for_participants_s,
        seed=spec.seed,
        evaluate_each_round=spec.evaluate_each_round,
        upload_dtype=spec.upload_dtype,
    )


def unlearning_spec_from_proto(msg: control_pb2.UnlearningSpec) -> UnlearningSpec:
    return UnlearningSpec(
        base_version=msg.base_version,
        forget=forget_from_proto(msg.forget),
        method=msg.method,
        rounds=msg.rounds,
        train=train_config_from_proto(msg.train),
        top_k=msg.top_k,
        layers=tuple(msg.layers),
        density=msg.density,
        min_participants=msg.min_participants,
        round_deadline_s=msg.round_deadline_s,
        wait_for_participants_s=msg.wait_for_participants_s,
        seed=msg.seed,
        evaluate_each_round=msg.evaluate_each_round,
        upload_dtype=msg.upload_dtype or "float32",
    )


def task_to_proto(task: TaskSpec) -> participant_pb2.Task:
    return participant_pb2.Task(
        task_id=task.task_id,
        job_id=task.job_id,
        phase=task.phase,
        round=task.round,
        kind=_TASK_KINDS[task.kind],
        model_blob_id=task.model_blob_id,
        model_name=task.model_name,
        num_classes=task.num_classes,
        train=train_config_to_proto(task.train),
        deadline_unix=task.deadline_unix,
        forget=forget_to_proto(task.forget) if task.forget else None,
        adapter=adapter_to_proto(task.adapter) if task.adapter else None,
    )


def task_from_proto(msg: participant_pb2.Task) -> TaskSpec:
    if msg.kind not in _TASK_KINDS_BACK:
        raise ValueError(f"task {msg.task_id}: unsupported task kind {msg.kind}")
    return TaskSpec(
        task_id=msg.task_id,
        job_id=msg.job_id,
        phase=msg.phase,
        round=msg.round,
        kind=_TASK_KINDS_BACK[msg.kind],
        model_blob_id=msg.model_blob_id,
        model_name=msg.model_name,
        num_classes=msg.num_classes,
        train=train_config_from_proto(msg.train),
        deadline_unix=msg.deadline_unix,
        forget=forget_from_proto(msg.forget) if msg.HasField("forget") else None,
        adapter=adapter_from_proto(msg.adapter) if msg.HasField("adapter") else None,
    )


def outcome_to_proto(outcome: TaskOutcome) -> participant_pb2.PushResultRequest:
    msg = participant_pb2.PushResultRequest(
        participant_id=outcome.participant_id, task_id=outcome.task_id
    )
    if outcome.train is not None:
        t = outcome.train
        msg.train.CopyFrom(
            participant_pb2.TrainResult(
                update_blob_id=t.update_blob_id,
                num_examples=t.num_examples,
                mean_loss=t.mean_loss,
                seconds=t.seconds,
            )
        )
    elif outcome.eval is not None:
        e = outcome.eval
        msg.eval.CopyFrom(
            participant_pb2.EvalResult(
                correct=e.correct,
                total=e.total,
                loss_sum=e.loss_sum,
                forget_correct=e.forget_correct,
                forget_total=e.forget_total,
            )
        )
    elif outcome.sensitivity is not None:
        msg.sensitivity.CopyFrom(
            participant_pb2.SensitivityResult(
                distances=outcome.sensitivity.distances,
                num_examples=outcome.sensitivity.num_examples,
            )
        )
    else:
        msg.error.message = outcome.error or "unknown error"
    return msg


def outcome_from_proto(msg: participant_pb2.PushResultRequest) -> TaskOutcome:
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
            tuple(e.correct), tuple(e.total), e.loss_sum, e.forget_correct, e.forget_total
        )
        return TaskOutcome(msg.participant_id, msg.task_id, eval=ev)
    if which == "sensitivity":
        sens = SensitivityOutcome(dict(msg.sensitivity.distances), msg.sensitivity.num_examples)
        return TaskOutcome(msg.participant_id, msg.task_id, sensitivity=sens)
    if which == "error":
        return TaskOutcome(msg.participant_id, msg.task_id, error=msg.error.message)
    raise ValueError("result has no outcome: set one of train, eval or error")


def round_to_proto(r: RoundRecord) -> control_pb2.RoundInfo:
    return control_pb2.RoundInfo(
        phase=r.phase,
        round=r.round,
        started_at=r.started_at,
        finished_at=r.finished_at or 0.0,
        participants=r.participants,
        metrics_json=_dumps(r.metrics),
    )


def round_from_proto(job_id: str, msg: control_pb2.RoundInfo) -> RoundRecord:
    return RoundRecord(
        job_id=job_id,
        phase=msg.phase,
        round=msg.round,
        started_at=msg.started_at,
        finished_at=msg.finished_at or None,
        participants=list(msg.participants),
        metrics=_loads(msg.metrics_json),
    )


def job_to_proto(job: JobRecord, rounds: list[RoundRecord] | None = None) -> control_pb2.JobInfo:
    return control_pb2.JobInfo(
        job_id=job.job_id,
        kind=job.kind,
        status=job.status.value,
        phase=job.phase,
        round=job.round,
        reason=job.reason,
        created_at=job.created_at,
        updated_at=job.updated_at,
        spec_json=_dumps(job.spec),
        result_json=_dumps(job.result),
        rounds=[round_to_proto(r) for r in rounds or []],
    )


def job_from_proto(msg: control_pb2.JobInfo) -> tuple[JobRecord, list[RoundRecord]]:
    job = JobRecord(
        job_id=msg.job_id,
        kind=msg.kind,
        spec=_loads(msg.spec_json),
        status=JobStatus(msg.status),
        phase=msg.phase,
        round=msg.round,
        reason=msg.reason,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        result=_loads(msg.result_json),
    )
    return job, [round_from_proto(msg.job_id, r) for r in msg.rounds]


def event_to_proto(e: JobEvent) -> control_pb2.JobEvent:
    return control_pb2.JobEvent(
        job_id=e.job_id,
        seq=e.seq,
        time=e.time,
        kind=e.kind,
        phase=e.phase,
        round=e.round,
        message=e.message,
        data_json=_dumps(e.data),
    )


def event_from_proto(msg: control_pb2.JobEvent) -> JobEvent:
    return JobEvent(
        job_id=msg.job_id,
        seq=msg.seq,
        time=msg.time,
        kind=msg.kind,
        phase=msg.phase,
        round=msg.round,
        message=msg.message,
        data=_loads(msg.data_json),
    )


def participant_to_proto(p: ParticipantRecord, online: bool) -> control_pb2.ParticipantInfo:
    return control_pb2.ParticipantInfo(
        participant_id=p.participant_id,
        dataset=p.info.get("dataset", ""),
        class_counts=p.class_counts,
        num_train=p.num_train,
        num_test=p.num_test,
        registered_at=p.registered_at,
        last_seen=p.last_seen,
        online=online,
    )


def participant_from_proto(msg: control_pb2.ParticipantInfo) -> tuple[ParticipantRecord, bool]:
    record = ParticipantRecord(
        participant_id=msg.participant_id,
        class_counts=list(msg.class_counts),
        num_train=msg.num_train,
        num_test=msg.num_test,
        registered_at=msg.registered_at,
        last_seen=msg.last_seen,
        info={"dataset": msg.dataset} if msg.dataset else {},
    )
    return record, msg.online


def model_to_proto(v: ModelVersion, active: bool) -> control_pb2.ModelVersionInfo:
    return control_pb2.ModelVersionInfo(
        version_id=v.version_id,
        job_id=v.job_id or "",
        parent_id=v.parent_id or "",
        kind=v.kind,
        digest=v.digest,
        model=v.model,
        num_params=v.num_params,
        created_at=v.created_at,
        meta_json=_dumps(v.meta),
        active=active,
    )


def model_from_proto(msg: control_pb2.ModelVersionInfo) -> tuple[ModelVersion, bool]:
    version = ModelVersion(
        version_id=msg.version_id,
        job_id=msg.job_id or None,
        parent_id=msg.parent_id or None,
        kind=msg.kind,
        digest=msg.digest,
        model=msg.model,
        num_params=msg.num_params,
        created_at=msg.created_at,
        meta=_loads(msg.meta_json),
    )
    return version, msg.active


def forget_from_dict(data: dict[str, Any]) -> ForgetSpec:
    """A ForgetSpec from its stored JSON form (dataclasses.asdict)."""
    return ForgetSpec(**{**data, "sample_ids": tuple(data.get("sample_ids", ()))})


def unlearning_spec_from_dict(data: dict[str, Any]) -> UnlearningSpec:
    """An UnlearningSpec from its stored JSON form (UnlearningSpec.to_dict)."""
    return UnlearningSpec(
        **{
            **data,
            "forget": forget_from_dict(data["forget"]),
            "train": TrainConfig(**data.get("train", {})),
            "layers": tuple(data.get("layers", ())),
        }
    )
