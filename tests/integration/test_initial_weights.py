"""A training job's initial weights come from the operator's side: `fusedctl` builds the
workload's model (checked against the schema the participants declared) or sends the
operator's file; the coordinator stores them with the job, checks them against the schema,
and a later retrain starts from exactly them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import grpc
import pytest

from fused.client import LocalError
from fused.client.initial_weights import start_training
from fused.client.upload import upload_artifact
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.domain.specs import RetrainConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.workloads import resolve_workload
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import common_pb2, control_pb2
from fused.tools.launch import LocalFederation

SPEC = TrainingSpec(
    rounds=1,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=3,
    round_deadline_s=60,
    evaluate_each_round=False,
)
WIDE_MLP = """\
from torch import nn
from fused.common.ml.workloads.builtin import PAIRS, ImageClassification

class Wide(ImageClassification):
    def make_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

WIDE = Wide(PAIRS["mlp"])
"""


def finished(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    stub = fed.control()
    for _ in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=300):
        pass
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    return info


def meta_of(fed: LocalFederation, version_id: str) -> dict[str, object]:
    models = fed.control().ListModels(control_pb2.ListModelsRequest()).models
    meta: dict[str, object] = json.loads(
        next(m for m in models if m.version_id == version_id).meta_json
    )
    return meta


def test_the_operators_weights_start_training_and_retraining(
    federation: LocalFederation, tmp_path: Path
) -> None:
    model = resolve_workload("mlp").build_model(7)
    path = tmp_path / "init.safetensors"
    path.write_bytes(encode_tensors(model.state_dict(), {"model": "mlp"}))
    trained = finished(federation, start_training(federation.control(), SPEC, path))
    assert trained.status == "completed", trained.reason
    version = json.loads(trained.result_json)["version_id"]
    meta = meta_of(federation, version)
    assert meta["init_digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["schema_digest"] == resolve_workload("mlp").schema_digest()
    forget = ForgetSpec(paradigm="participant", participant_id="p0")
    spec = UnlearningSpec(forget, RetrainConfig(), base_version=version, rounds=1)
    request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
    retrained = finished(federation, federation.control().StartUnlearning(request))
    assert retrained.status == "completed", retrained.reason
    first = json.loads(retrained.rounds[0].metrics_json)
    retrained_meta = meta_of(federation, json.loads(retrained.result_json)["version_id"])
    assert retrained_meta["init_digest"] == meta["init_digest"]
    assert first["bytes"]["total"] > 0
    federation.withdraw_all()  # the next tests train with every participant again


def test_weights_of_another_model_fail_the_job_saying_how(
    federation: LocalFederation, tmp_path: Path
) -> None:
    path = tmp_path / "lenet.safetensors"
    lenet = resolve_workload("lenet").build_model(0)
    path.write_bytes(encode_tensors(lenet.state_dict(), {"model": "lenet"}))
    spec = dataclasses.replace(SPEC, model="mlp")
    info = finished(federation, start_training(federation.control(), spec, path))
    assert info.status == "failed"
    assert "the initial weights do not fit the participants' model" in info.reason


def test_a_local_workload_of_another_schema_is_refused_before_anything_starts(
    federation: LocalFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "widemlp.py").write_text(WIDE_MLP)
    monkeypatch.syspath_prepend(str(tmp_path))
    jobs_before = len(federation.control().ListJobs(control_pb2.ListJobsRequest()).jobs)
    spec = dataclasses.replace(SPEC, model="widemlp:WIDE")
    with pytest.raises(LocalError, match="install the same version of the workload here"):
        start_training(federation.control(), spec)
    assert len(federation.control().ListJobs(control_pb2.ListJobsRequest()).jobs) == jobs_before


def test_uploads_and_starts_that_do_not_add_up_are_refused(federation: LocalFederation) -> None:
    stub = federation.control()
    data = b"weights" * 1000
    assert upload_artifact(stub, data) == hashlib.sha256(data).hexdigest()
    wrong = common_pb2.BlobChunk(blob_id="0" * 64, offset=0, data=data, total_size=len(data))
    gap = common_pb2.BlobChunk(blob_id="0" * 64, offset=5, data=data, total_size=len(data))
    for chunk, code in ((wrong, "INVALID_ARGUMENT"), (gap, "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadArtifact(iter([chunk]), timeout=10)
        assert err.value.code().name == code, err.value.details()
    unknown = dataclasses.replace(SPEC, model="mlp", init_weights="a" * 64)
    with pytest.raises(grpc.RpcError) as err:
        start_training(stub, unknown)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "upload the initial weights first" in (err.value.details() or "")
