"""Participants ask to be forgotten, with their own agent command: the request waits for an
operator, who lists, rejects or approves it with fusedctl; an approval runs the unlearning job
and the ledger names the participant as the one who asked. Deciding twice, deciding an unknown
request and a stranger asking are refused, and change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fused.client import Coordinator, JobStatus, TrainConfig, TrainingSpec
from fused.tools.launch import LocalFederation
from tests.integration.conftest import NUM_PARTICIPANTS

TRAINING = TrainingSpec(
    rounds=3,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=NUM_PARTICIPANTS,
    evaluate_each_round=False,
)


@pytest.fixture(scope="module")
def trained(federation: LocalFederation) -> LocalFederation:
    """The shared digits federation (conftest), with a trained model to forget from."""
    with Coordinator(federation.address) as coordinator:
        done = coordinator.wait(coordinator.train(TRAINING).job_id)
        assert done.status is JobStatus.COMPLETED, done.record.reason
    return federation


def ask(fed: LocalFederation, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fused.participant.main", "--coordinator", fed.address, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def fusedctl(fed: LocalFederation, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", fed.address, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def listed(fed: LocalFederation) -> dict[str, Any]:
    done = fusedctl(fed, "requests", "--json")
    assert done.returncode == 0, done.stderr
    return {r["participant_id"]: r for r in json.loads(done.stdout)}


def test_a_request_waits_for_an_operator_then_runs(
    trained: LocalFederation, digits_shards: Path, tmp_path: Path
) -> None:
    fed, shards = trained, digits_shards
    me = ask(fed, "--data-dir", str(shards / "p2"), "--forget-me")
    assert me.returncode == 0 and "to forget this participant: pending" in me.stdout, me.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text("3, 1\n2  # the first three\n")
    some = ask(fed, "--data-dir", str(shards / "p1"), "--forget-samples", str(ids))
    assert some.returncode == 0 and "to forget 3 samples: pending" in some.stdout, some.stderr
    requests = listed(fed)
    assert {p: r["status"] for p, r in requests.items()} == {"p1": "pending", "p2": "pending"}
    assert requests["p1"]["forget"]["sample_ids"] == [1, 2, 3]
    assert requests["p2"]["forget"] == {**requests["p2"]["forget"], "paradigm": "participant"}

    p1, p2 = requests["p1"]["request_id"], requests["p2"]["request_id"]
    assert fusedctl(fed, "requests", "reject", p1, "--reason", "under review").returncode == 0
    again = fusedctl(fed, "requests", "approve", p1)
    assert again.returncode != 0 and f"request {p1} is already rejected" in again.stderr
    unknown = fusedctl(fed, "requests", "approve", "r-ghost")
    assert unknown.returncode != 0 and "no forget request 'r-ghost'" in unknown.stderr

    approved = fusedctl(fed, "requests", "approve", p2, "--wait")
    assert approved.returncode == 0, approved.stderr
    requests = listed(fed)
    assert (requests["p2"]["status"], requests["p1"]["reason"]) == ("approved", "under review")
    with Coordinator(fed.address) as coordinator:
        job = coordinator.job(requests["p2"]["job_id"])
        assert job.status is JobStatus.COMPLETED, job.record.reason
        [entry] = coordinator.ledger()
    assert (entry.forget.participant_id, entry.requested_by) == ("p2", "participant:p2")
    assert entry.job_id == job.job_id


def test_only_registered_participants_may_ask(trained: LocalFederation) -> None:
    stranger = ask(
        trained, "--participant-id", "p9", "--workload", "mlp", "--data-dir", "x", "--forget-me"
    )
    assert stranger.returncode == 1
    assert "participant 'p9' is not registered: register before asking" in stranger.stderr
    assert "p9" not in listed(trained)
