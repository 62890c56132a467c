"""Conversions for the control protocol: job specs, jobs, rounds, events, participants, models."""

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
from fused.common.domain.specs import TrainingSpec, UnlearningSpec, method_config
from fused.common.rpc.task_convert import (
    copy_fields,
    forget_from_proto,
    forget_to_proto,
    train_config_from_proto,
    train_config_to_proto,
)
from fused.proto.v1 import control_pb2

# Fields that both job specs carry under the same name on both sides.
_SCHEDULE_FIELDS = (
    "rounds",
    "min_participants",
    "round_deadline_s",
    "wait_for_participants_s",
    "seed",
    "evaluate_each_round",
)
_TRAINING_FIELDS = (*_SCHEDULE_FIELDS, "model", "participants_per_round", "init_version")


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    return json.loads(text) if text else {}


def training_spec_to_proto(spec: TrainingSpec) -> control_pb2.TrainingSpec:
    return control_pb2.TrainingSpec(
        train=train_config_to_proto(spec.train), **copy_fields(spec, _TRAINING_FIELDS)
    )


def training_spec_from_proto(msg: control_pb2.TrainingSpec) -> TrainingSpec:
    return TrainingSpec(
        train=train_config_from_proto(msg.train), **copy_fields(msg, _TRAINING_FIELDS)
    )


def unlearning_spec_to_proto(spec: UnlearningSpec) -> control_pb2.UnlearningSpec:
    return control_pb2.UnlearningSpec(
        base_version=spec.base_version,
        forget=forget_to_proto(spec.forget),
        method=spec.method,
        train=train_config_to_proto(spec.train),
        **copy_fields(spec, _SCHEDULE_FIELDS),
        **spec.config.to_fields(),  # the method's own knobs are fields of the message
    )


def unlearning_spec_from_proto(msg: control_pb2.UnlearningSpec) -> UnlearningSpec:
    knobs = {
        "top_k": msg.top_k,
        "layers": tuple(msg.layers),
        "density": msg.density,
        "upload_dtype": msg.upload_dtype or "float32",
    }
    return UnlearningSpec(
        base_version=msg.base_version,
        forget=forget_from_proto(msg.forget),
        config=method_config(msg.method, knobs),  # SpecError for an unknown method
        train=train_config_from_proto(msg.train),
        **copy_fields(msg, _SCHEDULE_FIELDS),
    )


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
