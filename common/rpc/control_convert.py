"""Conversions for the control protocol: job specs, jobs, rounds, events, participants, models."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from google.protobuf.message import Message

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.ledger import ForgetRequest, LedgerEntry, LedgerStatus, RequestStatus
from fused.common.domain.record_codec import field_codecs, from_json, to_json
from fused.common.domain.records import (
    OFFER_KEYS,
    BlockedParticipant,
    JobEvent,
    JobRecord,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.common.domain.specs import (
    DEFAULT_SELECTION,
    ConsolidationSpec,
    TrainingSpec,
    UnlearningSpec,
    method_config,
)
from fused.common.rpc.task_convert import (
    copy_fields,
    forget_from_proto,
    forget_to_proto,
    train_config_from_proto,
    train_config_to_proto,
)
from fused.proto.v1 import control_pb2

M = TypeVar("M", bound=Message)
R = TypeVar("R")

# Fields that both job specs carry under the same name on both sides.
_SCHEDULE_FIELDS = (
    "rounds",
    "min_participants",
    "round_deadline_s",
    "wait_for_participants_s",
    "seed",
    "evaluate_each_round",
)
_STOP_FIELDS = ("stop_patience", "stop_min_delta")
_TRAINING_FIELDS = (
    *_SCHEDULE_FIELDS,
    "model",
    "participants_per_round",
    "init_version",
    "init_weights",
)


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    return json.loads(text) if text else {}


def policy_to_proto(policy: AggregationPolicy) -> control_pb2.AggregationPolicy:
    return control_pb2.AggregationPolicy(**policy.to_dict())


def policy_from_proto(msg: control_pb2.AggregationPolicy) -> AggregationPolicy:
    """Fields the message does not set keep their defaults."""
    return AggregationPolicy.from_dict({f.name: value for f, value in msg.ListFields()})


def training_spec_to_proto(spec: TrainingSpec) -> control_pb2.TrainingSpec:
    return control_pb2.TrainingSpec(
        train=train_config_to_proto(spec.train),
        policy=policy_to_proto(spec.policy),
        **copy_fields(spec, _TRAINING_FIELDS),
    )


def training_spec_from_proto(msg: control_pb2.TrainingSpec) -> TrainingSpec:
    return TrainingSpec(
        train=train_config_from_proto(msg.train),
        policy=policy_from_proto(msg.policy),
        **copy_fields(msg, _TRAINING_FIELDS),
    )


_CONSOLIDATION_FIELDS = (
    "base_version",
    "rounds",
    "seed",
    "min_participants",
    "round_deadline_s",
    "wait_for_participants_s",
)


def consolidation_spec_to_proto(spec: ConsolidationSpec) -> control_pb2.ConsolidationSpec:
    return control_pb2.ConsolidationSpec(
        train=train_config_to_proto(spec.train),
        policy=policy_to_proto(spec.policy),
        **copy_fields(spec, _CONSOLIDATION_FIELDS),
    )


def consolidation_spec_from_proto(msg: control_pb2.ConsolidationSpec) -> ConsolidationSpec:
    return ConsolidationSpec(
        train=train_config_from_proto(msg.train),
        policy=policy_from_proto(msg.policy),
        **copy_fields(msg, _CONSOLIDATION_FIELDS),
    )


def unlearning_spec_to_proto(spec: UnlearningSpec) -> control_pb2.UnlearningSpec:
    return control_pb2.UnlearningSpec(
        base_version=spec.base_version,
        forget=forget_to_proto(spec.forget),
        method=spec.method,
        train=train_config_to_proto(spec.train) if spec.train is not None else None,
        policy=policy_to_proto(spec.policy),
        **copy_fields(spec, _SCHEDULE_FIELDS),
        **copy_fields(spec, _STOP_FIELDS),
        **spec.config.to_fields(),  # the method's own knobs are fields of the message
    )


def unlearning_spec_from_proto(msg: control_pb2.UnlearningSpec) -> UnlearningSpec:
    knobs = {
        "top_k": msg.top_k,
        "layers": tuple(msg.layers),
        "density": msg.density,
        "upload_dtype": msg.upload_dtype or "float32",
        "selection": msg.selection or DEFAULT_SELECTION,
    }
    return UnlearningSpec(
        base_version=msg.base_version,
        forget=forget_from_proto(msg.forget),
        config=method_config(msg.method, knobs),  # SpecError for an unknown method
        train=train_config_from_proto(msg.train) if msg.HasField("train") else None,
        policy=policy_from_proto(msg.policy),
        **copy_fields(msg, _SCHEDULE_FIELDS),
        **copy_fields(msg, _STOP_FIELDS),
    )


def _to_proto(record: Any, message: type[M], **extra: Any) -> M:
    """`record` as `message`: a field of the same name takes its value, a `<name>_json` field
    its JSON; `extra` sets message fields the record does not have."""
    names = message.DESCRIPTOR.fields_by_name
    values = to_json(record)
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name in names and value is not None:
            fields[name] = value
        elif f"{name}_json" in names:
            fields[f"{name}_json"] = _dumps(value)
    return message(**fields, **extra)


def _from_proto(cls: type[R], msg: Message, **extra: Any) -> R:
    """The inverse of `_to_proto`: a zero value reads as None for an optional field; `extra`
    gives the record fields the message does not carry."""
    names = msg.DESCRIPTOR.fields_by_name
    data: dict[str, Any] = dict(extra)
    for codec in field_codecs(cls):
        if codec.name in extra:
            continue
        if codec.name in names:
            value = getattr(msg, codec.name)
            if codec.shape == "json":
                value = list(value)  # a repeated field
            elif codec.optional:
                value = value or None  # proto3 has no null: the zero value stands for None
            data[codec.name] = value
        elif f"{codec.name}_json" in names:
            data[codec.name] = _loads(getattr(msg, f"{codec.name}_json"))
    return from_json(cls, data)


def round_to_proto(r: RoundRecord) -> control_pb2.RoundInfo:
    return _to_proto(r, control_pb2.RoundInfo)


def round_from_proto(job_id: str, msg: control_pb2.RoundInfo) -> RoundRecord:
    return _from_proto(RoundRecord, msg, job_id=job_id)


def job_to_proto(job: JobRecord, rounds: list[RoundRecord] | None = None) -> control_pb2.JobInfo:
    return _to_proto(job, control_pb2.JobInfo, rounds=[round_to_proto(r) for r in rounds or []])


def job_from_proto(msg: control_pb2.JobInfo) -> tuple[JobRecord, list[RoundRecord]]:
    job = _from_proto(JobRecord, msg)
    return job, [round_from_proto(msg.job_id, r) for r in msg.rounds]


def event_to_proto(e: JobEvent) -> control_pb2.JobEvent:
    return _to_proto(e, control_pb2.JobEvent)


def event_from_proto(msg: control_pb2.JobEvent) -> JobEvent:
    return _from_proto(JobEvent, msg)


def participant_to_proto(
    p: ParticipantRecord, online: bool, blocked: BlockedParticipant | None = None
) -> control_pb2.ParticipantInfo:
    shown = {key: p.info.get(key, "") for key in OFFER_KEYS}
    msg = _to_proto(p, control_pb2.ParticipantInfo, online=online, **shown)
    if blocked is not None:
        msg.blocked, msg.blocked_reason = True, blocked.reason
    return msg


def blocked_to_proto(b: BlockedParticipant) -> control_pb2.ParticipantInfo:
    """A blocked id that has no participant record."""
    return control_pb2.ParticipantInfo(
        participant_id=b.participant_id, blocked=True, blocked_reason=b.reason
    )


def participant_from_proto(msg: control_pb2.ParticipantInfo) -> tuple[ParticipantRecord, bool]:
    info = {key: str(getattr(msg, key)) for key in OFFER_KEYS if getattr(msg, key)}
    return _from_proto(ParticipantRecord, msg, info=info), msg.online


def model_to_proto(v: ModelVersion, active: bool) -> control_pb2.ModelVersionInfo:
    return _to_proto(v, control_pb2.ModelVersionInfo, active=active)


def model_from_proto(msg: control_pb2.ModelVersionInfo) -> tuple[ModelVersion, bool]:
    return _from_proto(ModelVersion, msg), msg.active


def ledger_to_proto(entry: LedgerEntry) -> control_pb2.LedgerEntryInfo:
    return control_pb2.LedgerEntryInfo(
        entry_id=entry.entry_id,
        forget=forget_to_proto(entry.forget),
        requested_by=entry.requested_by,
        requested_at=entry.requested_at,
        job_id=entry.job_id,
        version_id=entry.version_id,
        status=entry.status.value,
        changed_at=entry.changed_at,
    )


def ledger_from_proto(msg: control_pb2.LedgerEntryInfo) -> LedgerEntry:
    return LedgerEntry(
        msg.entry_id,
        forget_from_proto(msg.forget),
        msg.requested_by,
        msg.requested_at,
        msg.job_id,
        msg.version_id,
        LedgerStatus(msg.status),
        msg.changed_at,
    )


def forget_request_to_proto(r: ForgetRequest) -> control_pb2.ForgetRequestInfo:
    return control_pb2.ForgetRequestInfo(
        request_id=r.request_id,
        participant_id=r.participant_id,
        forget=forget_to_proto(r.forget),
        requested_at=r.requested_at,
        status=r.status.value,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        reason=r.reason,
        job_id=r.job_id,
    )


def forget_request_from_proto(msg: control_pb2.ForgetRequestInfo) -> ForgetRequest:
    return ForgetRequest(
        msg.request_id,
        msg.participant_id,
        forget_from_proto(msg.forget),
        msg.requested_at,
        RequestStatus(msg.status),
        msg.decided_by,
        msg.decided_at,
        msg.reason,
        msg.job_id,
    )
