"""The forget ledger through real processes: an unlearning request is recorded, and every later
job obeys it. Forget the label-flipping p0, then train three more rounds from the unlearned
version: p0 receives no training task (also after it registers again), and FA on p0's data
stays at the unlearned level instead of climbing back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from fused.client.initial_weights import start_training
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.common.rpc.task_convert import forget_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape

PARTICIPANTS = 3
TRAIN = TrainConfig(local_epochs=2, lr=0.05, batch_size=32)
TRAINING = TrainingSpec(
    rounds=8, train=TRAIN, min_participants=PARTICIPANTS, evaluate_each_round=False
)
FORGET_P0 = ForgetSpec("participant", participant_id="p0")


def finished(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    stub = fed.control()
    for _ in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=300):
        pass
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    assert info.status == "completed", info.reason
    return info


def result(info: control_pb2.JobInfo) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(info.result_json)
    return out


def fa_of(fed: LocalFederation, version: str) -> float:
    """FA on p0's data of a version (a federated evaluation job)."""
    request = control_pb2.StartEvaluationRequest(
        version_id=version, forget=forget_to_proto(FORGET_P0), round_deadline_s=60
    )
    return float(result(finished(fed, fed.control().StartEvaluation(request)))["fa"])


def train_tasks_of(fed: LocalFederation, pid: str) -> float:
    """Training tasks the agent `pid` ran, from its own metrics endpoint."""
    samples = scrape(fed.participant_metrics[pid])
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "fused_participant_tasks_total" and dict(labels).get("kind") == "train"
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("ledger")
    config = PartitionConfig(num_participants=PARTICIPANTS, attacker=0)
    partition_to_directory("digits", None, root / "shards", config)
    with LocalFederation(root / "processes") as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            fed.start_participant(root / "shards" / f"p{i}")
        fed.wait_online(PARTICIPANTS)
        yield fed


@pytest.fixture(scope="module")
def unlearned(federation: LocalFederation) -> dict[str, Any]:
    """A base trained with the label flipper p0, and p0 forgotten from it with FUSED."""
    fed = federation
    base = result(finished(fed, start_training(fed.control(), TRAINING)))["version_id"]
    spec = UnlearningSpec(
        FORGET_P0,
        FusedConfig(density=0.1),
        base_version=base,
        rounds=5,
        train=TRAIN,
        min_participants=2,
        evaluate_each_round=False,
    )
    request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
    return result(finished(fed, fed.control().StartUnlearning(request)))


def test_later_training_obeys_the_ledger(
    federation: LocalFederation, unlearned: dict[str, Any]
) -> None:
    fed = federation
    assert unlearned["fa_after"] < unlearned["fa_before"]
    ledger = fed.control().ListLedger(control_pb2.ListLedgerRequest()).entries
    assert [(e.status, e.forget.participant_id, e.version_id) for e in ledger] == [
        ("active", "p0", unlearned["version_id"])
    ]
    assert unlearned["ledger_entries"] == [ledger[0].entry_id]

    # p0 registers again under its identity: it stays out of every training task
    fed.stop_participant("p0")
    fed.start_participant(fed.work_dir.parent / "shards" / "p0")
    fed.wait_online(PARTICIPANTS)
    before = train_tasks_of(fed, "p0")
    more = dataclasses.replace(TRAINING, rounds=3, init_version=unlearned["version_id"])
    more = dataclasses.replace(more, min_participants=2)
    trained = finished(fed, start_training(fed.control(), more))
    assert all(sorted(r.participants) == ["p1", "p2"] for r in trained.rounds if r.phase == "train")
    assert train_tasks_of(fed, "p0") == before == 0
    fa_after_training = fa_of(fed, result(trained)["version_id"])
    assert fa_after_training <= unlearned["fa_after"] + 0.05, (fa_after_training, unlearned)


def test_a_second_request_stacks_on_the_adapter_version(
    federation: LocalFederation, unlearned: dict[str, Any]
) -> None:
    fed, first = federation, unlearned["version_id"]
    spec = UnlearningSpec(  # a class needs a larger budget than a label flipper
        ForgetSpec("class", class_label=3),
        FusedConfig(top_k=3, density=0.3),
        base_version=first,
        rounds=8,
        train=dataclasses.replace(TRAIN, lr=0.1),
        min_participants=2,
        evaluate_each_round=False,
    )
    request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
    second = result(finished(fed, fed.control().StartUnlearning(request)))
    assert second["base_version"] == first
    assert second["fa_after"] < second["fa_before"]
    models = {
        m.version_id: m for m in fed.control().ListModels(control_pb2.ListModelsRequest()).models
    }
    assert models[second["version_id"]].parent_id == first
    fed.control().Revert(control_pb2.VersionRequest(version_id=second["version_id"]))
    assert export_digest(fed) == models[first].digest  # back one request, exactly
    entries = fed.control().ListLedger(control_pb2.ListLedgerRequest()).entries
    assert [(e.status, e.forget.paradigm) for e in entries] == [
        ("active", "participant"),
        ("active", "class"),
    ]


def export_digest(fed: LocalFederation) -> str:
    chunks = list(fed.control().ExportModel(control_pb2.ExportModelRequest()))
    return hashlib.sha256(b"".join(c.data for c in chunks)).hexdigest()


def test_fusedctl_shows_the_ledger(federation: LocalFederation) -> None:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", federation.address]
    table = subprocess.run([*cmd, "ledger"], capture_output=True, text=True, check=True).stdout
    assert "active" in table and "participant p0" in table
    as_json = subprocess.run(
        [*cmd, "--json", "ledger"], capture_output=True, text=True, check=True
    ).stdout
    entry = json.loads(as_json)[0]
    assert entry["forget"]["participant_id"] == "p0" and entry["status"] == "active"


def test_a_withdrawn_request_binds_no_later_job(federation: LocalFederation) -> None:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", federation.address]
    entries = federation.control().ListLedger(control_pb2.ListLedgerRequest()).entries
    p0 = next(e.entry_id for e in entries if e.forget.paradigm == "participant")
    done = subprocess.run([*cmd, "ledger", "withdraw", p0], capture_output=True, text=True)
    assert done.returncode == 0 and f"withdrew {p0} (participant p0)" in done.stdout
    again = subprocess.run([*cmd, "ledger", "withdraw", p0], capture_output=True, text=True)
    assert again.returncode != 0 and "already withdrawn" in again.stderr
    unknown = subprocess.run([*cmd, "ledger", "withdraw", "f-nope"], capture_output=True, text=True)
    assert unknown.returncode != 0 and "no ledger entry 'f-nope'" in unknown.stderr
    trained = finished(federation, start_training(federation.control(), TRAINING))
    rounds = [r for r in trained.rounds if r.phase == "train"]
    assert all(sorted(r.participants) == ["p0", "p1", "p2"] for r in rounds)  # p0 is back
