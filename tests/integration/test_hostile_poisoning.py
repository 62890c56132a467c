"""Poisoning and isolation against a real, token-authenticated federation on loopback: three
honest agents, mallory (a registered participant who speaks raw gRPC and answers each task
with a plausibility attack) and trudy (who registers another data set).

One training job shows each attack refused or capped, with its reason in the round's
record, while the job completes with the honest participants and trudy is left out of it;
then the operator blocks mallory with fusedctl, and a second job runs without her.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fused.cli.pki import init_pki
from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.identity import read_token_file
from fused.participant.site import builtin_summary
from fused.proto.v1 import control_pb2, control_pb2_grpc
from fused.tools.launch import LocalFederation, scrape
from tests.integration.hostile import Client, attempt, described
from tests.integration.poisoning import CLAIMED, MALLORY, SUMMARY, Poisoner

HONEST = ("p0", "p1", "p2")
TRUDY = "trudy"
OTHER = builtin_summary("lenet", [10] * 10, 20, "fashionmnist")
SPEC = TrainingSpec(
    rounds=3,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=len(HONEST),
    round_deadline_s=60,
    wait_for_participants_s=30,
    seed=5,
)
OK = grpc.StatusCode.OK


@dataclass
class Federation:
    fed: LocalFederation
    pki: Path

    def client(self, pid: str) -> Client:
        return Client(self.fed.address, pid, read_token_file(self.pki / f"participant-{pid}.token"))

    def fusedctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        token = self.pki / "operator-admin.token"
        command = ["--coordinator", self.fed.address, "--token-file", str(token), *argv]
        return subprocess.run(
            [sys.executable, "-m", "fused.cli.main", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def federation(
    digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("poisoning")
    pki = work / "pki"
    init_pki(pki, [*HONEST, MALLORY, TRUDY])
    operator = read_token_file(pki / "operator-admin.token")
    with LocalFederation(work / "federation", operator_token=operator) as fed:
        fed.start_coordinator(
            "--auth-file",
            str(pki / "auth.toml"),
            "--offline-after-s",
            "60",
            "--heartbeat-interval-s",
            "1",
        )
        for pid in HONEST:
            token = str(pki / f"participant-{pid}.token")
            fed.start_participant(digits_shards / pid, "--token-file", token)
        fed.wait_online(len(HONEST))
        yield Federation(fed, pki)


def start(control: control_pb2_grpc.ControlServiceStub, spec: TrainingSpec) -> str:
    return start_training(control, spec).job_id


def events(control: control_pb2_grpc.ControlServiceStub, job_id: str) -> list[control_pb2.JobEvent]:
    return list(control.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=60))


def metrics(info: control_pb2.JobInfo, phase: str, r: int) -> dict[str, Any]:
    record = next(x for x in info.rounds if x.phase == phase and x.round == r)
    assert sorted(record.participants) == list(HONEST), (phase, r, record.participants)
    data: dict[str, Any] = json.loads(record.metrics_json)
    return data


def registered(control: control_pb2_grpc.ControlServiceStub) -> dict[str, Any]:
    reply = control.ListParticipants(control_pb2.ListParticipantsRequest(), timeout=10)
    return {p.participant_id: p for p in reply.participants}


def test_poisoning_is_refused_or_capped_and_the_job_completes(federation: Federation) -> None:
    fed = federation.fed
    control = fed.control()
    mallory, trudy = federation.client(MALLORY), federation.client(TRUDY)
    try:
        mallory.register(SUMMARY)
        trudy.register(OTHER)
        poisoner = Poisoner(mallory, control)
        job_id = start(control, SPEC)
        info = poisoner.serve(job_id)
        trudy_task = trudy.pull(wait_s=0.0)
    finally:
        mallory.close()
        trudy.close()
    assert info.status == "completed", info.reason
    said = {a.attack: (a.code, a.details) for a in poisoner.answers.values()}
    print(json.dumps({k: [c.name, d] for k, (c, d) in said.items()}, indent=1))

    # A finite 3e38 update: taken by PushResult, refused once the round is in, counted.
    assert said["huge update"] == (OK, "accepted=True ")
    train1 = metrics(info, "train", 1)
    why = train1["failures"][MALLORY]
    median = (
        r"update L2 norm \d\.\d+e\+(39|40) is [\d.e+]+x the round's median [\d.]+ \(limit 10x\)"
    )
    assert re.fullmatch("update refused: " + median, why), why
    samples = scrape(fed.metrics_port)
    assert samples[("fused_refused_updates_total", (("reason", "norm_ratio"),))] == 1.0

    # Removing her while she holds a task is refused; she stays registered.
    code, details = said["remove while her task is open"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        details
        == "participant 'mallory' holds 1 open task(s): wait for its round to end, or block it"
    )

    # A million claimed samples: counted as much as the honest three together.
    assert said["inflated num_examples"] == (OK, "accepted=True ")
    honest_train = train1["num_examples"]  # round 1 counted the honest three only
    train2 = next(r for r in info.rounds if r.phase == "train" and r.round == 2)
    assert sorted(train2.participants) == sorted([*HONEST, MALLORY])
    assert json.loads(train2.metrics_json)["num_examples"] == 2 * honest_train
    capped = [e.message for e in events(control, job_id) if e.kind == "weight_capped"]
    assert capped == [
        f"{MALLORY}: {CLAIMED} samples count as {honest_train} (at most 0.5 of the round)"
    ]

    # Evaluation counts: above her registration refused; within it, capped to half.
    code, details = said["evaluation counts above registration"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        f"result rejected: evaluation counts cover {2 * CLAIMED} test samples; this "
        f"participant registered {CLAIMED}"
    )
    assert said["inflated evaluation counts"] == (OK, "accepted=True ")
    eval2 = json.loads(
        next(r for r in info.rounds if r.phase == "evaluate" and r.round == 2).metrics_json
    )
    honest_test = metrics(info, "evaluate", 1)["num_examples"]
    # hers counted as much as the others' sum (rounded down in each of her 10 classes)
    assert sum(eval2["total"]) == honest_test + 10 * (honest_test // 10)
    assert eval2["accuracy"] < 1.0

    # Trudy registered another workload: left out (reported once), never given a task.
    left_out = [e.message for e in events(control, job_id) if e.kind == "participant_left_out"]
    assert left_out == ["left out of this job: trudy: serves workload 'lenet', not 'mlp'"]
    assert trudy_task is None
    assert all(TRUDY not in r.participants for r in info.rounds)

    # The honest agents and the coordinator are still there.
    assert fed.coordinator is not None and fed.coordinator.poll() is None
    assert all(proc.poll() is None for proc in fed.participants.values())


def test_a_blocked_participant_is_refused_and_never_selected(federation: Federation) -> None:
    fed = federation.fed
    control = fed.control()
    mallory = federation.client(MALLORY)
    try:
        mallory.register(SUMMARY)
        blocked = federation.fusedctl("participants", "block", MALLORY, "--reason", "3e38 update")
        assert (blocked.returncode, blocked.stdout) == (0, f"blocked participant {MALLORY}\n")
        denied = f"participant {MALLORY!r} is blocked by the coordinator's operator"
        for call in (lambda: str(mallory.register(SUMMARY)), lambda: str(mallory.pull(0.0))):
            code, details = attempt(call)
            assert (code, details.startswith(denied)) == (grpc.StatusCode.PERMISSION_DENIED, True)
        listed = registered(control)[MALLORY]
        assert (listed.blocked, listed.blocked_reason, listed.online) == (
            True,
            "3e38 update",
            False,
        )

        job_id = start(control, dataclasses.replace(SPEC, rounds=1))
        assert events(control, job_id)[-1].kind == "job_completed"
        info = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
        for record in info.rounds:
            assert sorted(record.participants) == list(HONEST)
            assert MALLORY not in json.loads(record.metrics_json)["failures"]

        removed = federation.fusedctl("participants", "remove", MALLORY)
        assert (removed.returncode, removed.stdout) == (0, f"removed participant {MALLORY}\n")
        again = federation.fusedctl("participants", "remove", MALLORY)
        assert again.returncode == 1 and f"NOT_FOUND: no participant {MALLORY!r}" in again.stderr
        listed = registered(control)[MALLORY]  # the block outlives the record
        assert (listed.blocked, listed.num_train) == (True, 0)

        assert federation.fusedctl("participants", "unblock", MALLORY).returncode == 0
        assert described(mallory.register(SUMMARY)).startswith("heartbeat_interval_s")
        assert not registered(control)[MALLORY].blocked
    finally:
        mallory.close()
