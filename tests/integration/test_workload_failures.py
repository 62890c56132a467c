"""Bad workloads fail clearly, through real processes: a workload whose model differs from the
job's (another tensor schema), one that raises while building, and one whose loss is NaN. The
participant says why (at registration, or as the task's error), the job fails or continues by
its quorum with a message naming the participant and the cause, and every agent keeps running.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation

USER_MODULE = '''\
"""Three broken variants of the built-in digits MLP, as a user might write them."""
import torch
from torch import nn

from fused.common.ml.workloads.builtin import PAIRS, ImageClassification


class Wide(ImageClassification):  # same name, another model: a different tensor schema
    def make_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


class Exploding(ImageClassification):  # raises while building its model
    def make_model(self) -> nn.Module:
        raise RuntimeError("out of coffee")


class NaNLoss(ImageClassification):  # the right model, a loss that diverges
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().loss(outputs, targets) * float("nan")


WIDE, EXPLODING, NAN_LOSS = (cls(PAIRS["mlp"]) for cls in (Wide, Exploding, NaNLoss))
'''

SPEC = TrainingSpec(
    model="mlp",
    rounds=1,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=2,
    round_deadline_s=60,
    wait_for_participants_s=3,
    evaluate_each_round=False,
)


@pytest.fixture(scope="module")
def federation(
    digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    """p0, p1 serve the built-in MLP; p2 a wider model under its name; p3 one that raises."""
    work = tmp_path_factory.mktemp("bad-workloads")
    (work / "badworkloads.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(work))  # the agents' processes import the module
        with LocalFederation(work / "processes") as fed:
            fed.start_coordinator()
            for pid in ("p0", "p1"):
                fed.start_participant(digits_shards / pid)
            fed.start_participant(digits_shards / "p2", "--workload", "badworkloads:WIDE")
            fed.start_participant(
                digits_shards / "p2",
                "--workload",
                "badworkloads:EXPLODING",
                "--participant-id",
                "p3",
                name="p3",
            )
            fed.wait_online(4)
            yield fed


def run(fed: LocalFederation, spec: TrainingSpec) -> control_pb2.JobInfo:
    stub = fed.control()
    job = start_training(stub, spec)
    for _ in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=300):
        pass
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    return info


def events(fed: LocalFederation, job_id: str) -> list[control_pb2.JobEvent]:
    request = control_pb2.WatchJobRequest(job_id=job_id)
    return list(fed.control().WatchJob(request, timeout=30))


def test_participants_declare_their_workload_or_why_it_cannot_run(
    federation: LocalFederation,
) -> None:
    listed = federation.control().ListParticipants(control_pb2.ListParticipantsRequest())
    by_id = {p.participant_id: p for p in listed.participants}
    assert by_id["p0"].workload == by_id["p2"].workload == "mlp"
    assert by_id["p0"].schema_digest == by_id["p1"].schema_digest != by_id["p2"].schema_digest
    assert "building the model failed" in by_id["p3"].workload_error
    assert "out of coffee" in by_id["p3"].workload_error


def test_a_job_that_cannot_start_names_who_disagrees_and_how(
    federation: LocalFederation,
) -> None:
    info = run(federation, dataclasses.replace(SPEC, min_participants=4))
    assert info.status == "failed"
    assert "only 2 of the 4 required participants" in info.reason
    assert "p2: its model's tensor schema" in info.reason
    assert "p3: its workload cannot run there" in info.reason and "out of coffee" in info.reason


def test_the_job_goes_on_without_them_and_reports_each_once(
    federation: LocalFederation,
) -> None:
    info = run(federation, SPEC)
    assert info.status == "completed", info.reason
    assert sorted(info.rounds[0].participants) == ["p0", "p1"]
    left = [e for e in events(federation, info.job_id) if e.kind == "participant_left_out"]
    assert sorted(json.loads(e.data_json)["participant"] for e in left) == ["p2", "p3"]


def test_a_nan_loss_is_the_task_error_and_the_quorum_decides(
    federation: LocalFederation, digits_shards: Path
) -> None:
    federation.stop_participant("p2")
    federation.start_participant(digits_shards / "p2", "--workload", "badworkloads:NAN_LOSS")
    federation.wait_online(4)
    failed = run(federation, dataclasses.replace(SPEC, min_participants=3))
    assert failed.status == "failed"
    assert "p2: NonFiniteResult: local training diverged" in failed.reason
    info = run(federation, SPEC)
    assert info.status == "completed", info.reason
    failures = json.loads(info.rounds[0].metrics_json)["failures"]
    assert "local training diverged" in failures["p2"]
    online = federation.control().ListParticipants(control_pb2.ListParticipantsRequest())
    assert sum(p.online for p in online.participants) == 4  # every agent kept running
