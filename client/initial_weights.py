"""A training job's initial weights, made on the operator's side: the coordinator never runs
workload code, so the client (`Coordinator.train`, `fusedctl train`) builds the workload's
model from the seed here (sized to the participants' data, checked against the schema they
declared) or reads the operator's file, uploads it, and names the artifact in the job."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from fused.client.errors import LocalError
from fused.client.upload import upload_artifact
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.domain.specs import TrainingSpec
from fused.common.ml.workloads import Workload, WorkloadError, resolve_workload
from fused.common.rpc.control_convert import training_spec_to_proto
from fused.proto.v1 import control_pb2, control_pb2_grpc

Stub = control_pb2_grpc.ControlServiceStub
MAX_INIT_BYTES = 4 << 30  # what the decoder accepts from an operator's own file


def start_training(
    stub: Stub, spec: TrainingSpec, init_file: Path | None = None, timeout: float = 60.0
) -> control_pb2.JobInfo:
    """Start `spec`; unless it continues a stored version, first upload its initial weights
    (`init_file`, or the workload's model built from `spec.seed`). Raises LocalError or
    grpc.RpcError."""
    if not spec.init_version and not spec.init_weights:
        if init_file is not None:  # the job's workload: as named, else the file's own
            name, data = _file_weights(init_file)
            name = spec.model or name
        else:  # the workload's own name: a job never names a module:attribute reference
            name, data = _built_weights(stub, spec)
        digest = upload_artifact(stub, data, timeout)
        spec = dataclasses.replace(spec, model=name, init_weights=digest)
    request = control_pb2.StartTrainingRequest(spec=training_spec_to_proto(spec))
    reply: control_pb2.JobInfo = stub.StartTraining(request, timeout=timeout)
    return reply


def _file_weights(path: Path) -> tuple[str, bytes]:
    """The operator's safetensors file, checked to decode (the job checks its schema)."""
    try:
        data = path.read_bytes()
        _, meta = decode_tensors(data, max_bytes=MAX_INIT_BYTES)
    except (OSError, ValueError) as exc:
        raise LocalError(f"--init-weights {path}: {exc}") from exc
    return meta.get("model", ""), data


def _built_weights(stub: Stub, spec: TrainingSpec) -> tuple[str, bytes]:
    """The workload's model from the seed, sized like the participants' data."""
    offers = _online_offers(stub)
    reference = spec.model or _most_served(offers)
    try:
        workload = resolve_workload(reference)
        served = [o for o in offers if o.workload == workload.name]
        workload = _sized(workload, served)
        digest = workload.schema_digest()
        state = workload.build_model(spec.seed).state_dict()
    except WorkloadError as exc:
        raise LocalError(f"{exc} (or pass --init-weights FILE)") from exc
    except Exception as exc:  # the user's model code
        raise LocalError(f"workload {reference!r}: building the model failed: {exc!r}") from exc
    declared = Counter(o.schema_digest for o in served)
    if declared and digest not in declared:
        common = declared.most_common(1)[0][0]
        raise LocalError(
            f"workload {workload.name!r} here builds tensor schema {digest[:12]}, the online "
            f"participants serving it declared {common[:12]}: install the same version of the "
            "workload here, or pass --init-weights FILE"
        )
    return workload.name, encode_tensors(state, {"model": workload.name})


def _online_offers(stub: Stub) -> list[control_pb2.ParticipantInfo]:
    reply = stub.ListParticipants(control_pb2.ListParticipantsRequest(), timeout=30)
    return [p for p in reply.participants if p.online and p.workload and not p.workload_error]


def _most_served(offers: list[control_pb2.ParticipantInfo]) -> str:
    if not offers:
        raise LocalError(
            "no online participant serves a workload yet: name one with --model, or start "
            "the participants first"
        )
    return Counter(o.workload for o in offers).most_common(1)[0][0]


def _sized(workload: Workload, served: list[control_pb2.ParticipantInfo]) -> Workload:
    """The workload for the class count most of its participants hold."""
    if workload.num_classes is None or not served:
        return workload
    classes = Counter(len(o.class_counts) for o in served).most_common(1)[0][0]
    return workload.with_classes(classes)
