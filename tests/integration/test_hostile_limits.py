"""Bounded inputs against a real, token-authenticated federation on loopback: oversized
fields, huge counts and 1 MB ids get INVALID_ARGUMENT with a short exact message; forged
accounting metadata charges nothing; untrusted text in logs is escaped and a flood of
refusals costs a bounded number of log lines. Afterwards the coordinator serves its listings
and every job record stays small.

Two honest agents (p0, p1) and mallory, a registered participant with a valid token who
speaks raw gRPC (the hostile corpus's client)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fused.cli.pki import init_pki
from fused.client import initial_weights
from fused.common.rpc.identity import read_token_file
from fused.common.rpc.metering import KNOWN_PHASES, MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.proto.v1 import control_pb2, control_pb2_grpc, participant_pb2
from fused.tools.launch import LocalFederation, scrape
from tests.integration.hostile import Client, Metadata, attempt, described
from tests.integration.hostile_attack import Hostile
from tests.integration.hostile_limits import (
    id_cases,
    ledger_cases,
    metadata_cases,
    register_cases,
)
from tests.integration.hostile_names import EVE, HONEST, MALLORY, SUMMARY, TRAINING

FLOOD = 300  # forged-metadata calls of each kind
RECORD_BYTES = 16 << 10  # a round's metrics_json stays under this; a job's JobInfo under 4x
TERMINAL = ("completed", "failed")


@pytest.fixture(scope="module")
def hostile(digits_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    work = tmp_path_factory.mktemp("limits")
    pki = work / "pki"
    init_pki(pki, [*HONEST, MALLORY, EVE])
    operator = read_token_file(pki / "operator-admin.token")
    with LocalFederation(work / "federation", operator_token=operator) as fed:
        fed.start_coordinator(
            *("--auth-file", str(pki / "auth.toml"), "--offline-after-s", "60"),
            *("--heartbeat-interval-s", "1", "--per-participant-metrics"),
        )
        for pid in HONEST:
            token = str(pki / f"participant-{pid}.token")
            fed.start_participant(digits_shards / pid, "--token-file", token)
        fed.wait_online(len(HONEST))
        yield Hostile(fed, pki)


@pytest.fixture(scope="module")
def mallory(hostile: Hostile) -> Iterator[Client]:
    client = Client(hostile.fed.address, MALLORY, hostile.token("participant", MALLORY))
    try:
        yield client
    finally:
        client.close()


def operator(hostile: Hostile) -> control_pb2_grpc.ControlServiceStub:
    return hostile.fed.control()


def log_text(hostile: Hostile) -> str:
    return (hostile.fed.work_dir / "coordinator.log").read_text(errors="replace")


# --------------------------------------------------------------------------- answers


def test_oversized_inputs_get_exact_short_answers(hostile: Hostile, mallory: Client) -> None:
    mallory.register(SUMMARY)  # so that the handlers behind the table would run
    cases = [
        *register_cases(mallory),
        *id_cases(mallory, operator(hostile)),
        *ledger_cases(operator(hostile)),
        *metadata_cases(mallory),
    ]
    got = {case.name: attempt(case.call) for case in cases}
    print("\n".join(f"{n}: {c.name} {d!r}" for n, (c, d) in got.items()))  # pytest -s
    wrong = {
        case.name: got[case.name] for case in cases if got[case.name] != (case.code, case.message)
    }
    assert not wrong, wrong
    assert all(len(message) < 200 for _, message in got.values())
    assert mallory.serving()


# --------------------------------------------------------------------------- accounting


def serve(
    hostile: Hostile,
    mallory: Client,
    job_id: str,
    on_train: Callable[[participant_pb2.Task], str],
) -> control_pb2.JobInfo:
    """Answer mallory's tasks of the job until it ends: a training task with `on_train`'s
    error text (after whatever it does), any other with a plain error."""
    control = operator(hostile)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        task = mallory.pull(wait_s=1.0)
        if task is not None:
            reason = on_train(task) if task.phase == "train" else "mallory declines"
            error = participant_pb2.TaskError(message=reason)
            request = participant_pb2.PushResultRequest(
                participant_id=MALLORY, task_id=task.task_id, error=error
            )
            mallory.push(request)
            continue
        info: control_pb2.JobInfo = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
        if info.status in TERMINAL:
            return info
    raise TimeoutError(job_id)


def start_job(hostile: Hostile, min_participants: int) -> str:
    spec = dataclasses.replace(TRAINING, rounds=1, min_participants=min_participants)
    return str(initial_weights.start_training(operator(hostile), spec).job_id)


def task_md(pid: str, job: str, phase: str, round_number: str) -> Metadata:
    return ((MD_PARTICIPANT, pid), (MD_JOB, job), (MD_PHASE, phase), (MD_ROUND, round_number))


def heartbeat_code(client: Client, metadata: Metadata) -> grpc.StatusCode:
    beat = participant_pb2.HeartbeatRequest(participant_id=MALLORY)
    code, _ = attempt(lambda: described(client.stub.Heartbeat(beat, metadata=metadata)))
    return code


def forge(hostile: Hostile, mallory: Client, task: participant_pb2.Task) -> list[str]:
    """While her training task is open: calls whose metadata names other participants,
    other rounds, made-up phases and jobs, with and without credentials; then the honest
    download of her task's model. Returns the codes each kind of call got."""
    job, phase, r = task.job_id, task.phase, str(task.round)
    anonymous = Client(hostile.fed.address, MALLORY, None)
    kinds: dict[str, tuple[Client, Callable[[int], Metadata]]] = {
        "no credentials, as x<i> in her round": (
            anonymous,
            lambda i: task_md(f"x{i}", job, phase, r),
        ),
        "as p0, in her round": (mallory, lambda i: task_md("p0", job, phase, r)),
        "made-up phases": (mallory, lambda i: task_md(MALLORY, job, f"ph{i}", r)),
        "made-up jobs": (mallory, lambda i: task_md(MALLORY, f"job-{i}", phase, r)),
        "rounds of no task": (mallory, lambda i: task_md(MALLORY, job, phase, str(1000 + i))),
    }
    codes = []
    try:
        for name, (client, metadata) in kinds.items():
            seen = {heartbeat_code(client, (*client.md, *metadata(i))) for i in range(FLOOD)}
            codes.append(f"{name}: {','.join(sorted(code.name for code in seen))}")
    finally:
        anonymous.close()
    mallory.download(task.model_blob_id, md=(*mallory.md, *task_md(MALLORY, job, phase, r)))
    return codes


def test_forged_metadata_charges_nothing(hostile: Hostile, mallory: Client) -> None:
    mallory.register(SUMMARY)
    codes: list[str] = []

    def attack(task: participant_pb2.Task) -> str:
        codes.extend(forge(hostile, mallory, task))
        return "mallory declines"

    info = serve(hostile, mallory, start_job(hostile, 2), attack)
    assert info.status == "completed", info.reason
    assert codes == [
        "no credentials, as x<i> in her round: UNAUTHENTICATED",
        "as p0, in her round: PERMISSION_DENIED",
        "made-up phases: OK",
        "made-up jobs: OK",
        "rounds of no task: OK",
    ]
    train = [r for r in info.rounds if r.phase == "train"]
    assert [r.round for r in train] == [1]
    moved = json.loads(train[0].metrics_json)["bytes"]
    assert set(moved["up"]) == set(moved["down"]) == {*HONEST, MALLORY}
    assert moved["down"][MALLORY] > 0  # her model download, in her own round
    assert {r.phase for r in info.rounds} <= {"train", "evaluate"}
    for r in info.rounds:
        assert set(json.loads(r.metrics_json)["bytes"]["up"]) <= {*HONEST, MALLORY}
    assert_records_small(hostile)
    assert_labels_bounded(hostile)


def assert_labels_bounded(hostile: Hostile) -> None:
    port = hostile.fed.metrics_port
    samples = scrape(port)
    wire = [dict(labels) for (name, labels) in samples if name == "fused_wire_bytes_total"]
    assert {s["phase"] for s in wire} <= KNOWN_PHASES | {"other"}
    assert all("participant" not in s for s in wire)
    each = scrape(port, path=PARTICIPANTS_PATH)
    own = [dict(labels) for (name, labels) in each if name == "fused_participant_wire_bytes_total"]
    assert {s["participant"] for s in own} <= {*HONEST, MALLORY, "-", "unknown"}
    assert {s["phase"] for s in own} <= KNOWN_PHASES | {"other"}


def assert_records_small(hostile: Hostile) -> None:
    control = operator(hostile)
    jobs = control.ListJobs(control_pb2.ListJobsRequest(), timeout=30).jobs
    assert jobs
    for job in jobs:
        info = control.GetJob(control_pb2.GetJobRequest(job_id=job.job_id), timeout=30)
        assert info.ByteSize() < 4 * RECORD_BYTES, (job.job_id, info.ByteSize())
        assert all(len(r.metrics_json) < RECORD_BYTES for r in info.rounds)
        assert list(control.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=30))
    listed = control.ListParticipants(control_pb2.ListParticipantsRequest(), timeout=30)
    assert {p.participant_id for p in listed.participants} >= {*HONEST, MALLORY}
    assert all(len(p.dataset) <= 64 for p in listed.participants)


# --------------------------------------------------------------------------- logs

FORGED = "2026-01-01 00:00:00,000 coordinator WARNING fused.coordinator.auth: forged"


def test_untrusted_text_in_logs_is_escaped(hostile: Hostile, mallory: Client) -> None:
    """Her error report (free text, 512 characters at most) reaches the log in the failed
    job's reason: on one line, escaped."""
    mallory.register(SUMMARY)
    info = serve(hostile, mallory, start_job(hostile, 3), lambda task: f"boom\n{FORGED}")
    assert info.status == "failed" and f"boom\n{FORGED}" in info.reason
    log = log_text(hostile)
    assert f"boom\\n{FORGED}" in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())


def test_a_flood_of_huge_ids_costs_a_bounded_log(hostile: Hostile, mallory: Client) -> None:
    before = len(log_text(hostile))
    request = participant_pb2.PushResultRequest(participant_id=MALLORY, task_id="t" * 4_000_000)
    answers = {attempt(lambda: described(mallory.push(request))) for _ in range(50)}
    assert answers == {
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "result rejected: PushResultRequest.task_id is 4000000 characters long "
            "('tttttttttttttttt...'); the limit is 64",
        )
    }
    grown = log_text(hostile)[before:]
    refusals = [line for line in grown.splitlines() if "refused PushResult" in line]
    assert 1 <= len(refusals) <= 10  # the burst of one peer; the rest are counted, not logged
    assert len(grown) < 8 << 10, len(grown)
    assert_records_small(hostile)
