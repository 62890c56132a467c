"""A corpus of malformed and malicious requests against a real, token-authenticated federation.

Two honest agents (p0, p1) and "mallory", a registered participant with a valid token who
speaks raw gRPC, take part in a training job and then a FUSED unlearning job. Mallory answers
every task she gets with attacks: while her first training task is open she fires the
requests that leave it open (bad credentials, foreign ids, unknown fields, oversized
messages, forbidden downloads, broken uploads, malformed results); then each task she gets
takes one attack that fails it (a poisoned or malformed update, adapter or report). Every
request must get its precise status and message, the coordinator must keep serving, and
every round's aggregate must be bit-identical to that of the same jobs run before mallory
joined.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fused.cli.pki import init_pki
from fused.client import initial_weights
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.common.rpc.identity import read_token_file
from fused.proto.v1 import control_pb2, control_pb2_grpc
from fused.tools.launch import LocalFederation
from tests.integration.hostile import (
    Client,
    attempt,
    described,
)
from tests.integration.hostile_attack import Attack, Hostile
from tests.integration.hostile_names import (
    EVE,
    HONEST,
    INVALID,
    MALLORY,
    MAX_UPLOAD,
    MIN_CASES,
    SUMMARY,
    TRAIN_KIND,
    TRAINING,
    UNLEARNING,
)


@pytest.fixture(scope="module")
def hostile(digits_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    work = tmp_path_factory.mktemp("hostile")
    pki = work / "pki"
    init_pki(pki, [*HONEST, MALLORY, EVE])
    operator = read_token_file(pki / "operator-admin.token")
    with LocalFederation(work / "federation", operator_token=operator) as fed:
        fed.start_coordinator(
            "--keep-artifacts",  # the attacks reuse p0's uploads from the reference job
            "--auth-file",
            str(pki / "auth.toml"),
            "--max-upload-mb",
            str(MAX_UPLOAD >> 20),
            "--offline-after-s",
            "60",
            "--heartbeat-interval-s",
            "1",
        )
        for pid in HONEST:
            token = str(pki / f"participant-{pid}.token")
            fed.start_participant(digits_shards / pid, "--token-file", token)
        fed.wait_online(len(HONEST))
        yield Hostile(fed, pki)


# --------------------------------------------------------------------------- jobs


def wait_job(control: control_pb2_grpc.ControlServiceStub, job_id: str) -> control_pb2.JobInfo:
    list(control.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=180))
    info: control_pb2.JobInfo = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
    assert info.status == "completed", info.reason
    return info


def start_training(control: control_pb2_grpc.ControlServiceStub) -> str:
    return initial_weights.start_training(control, TRAINING).job_id


def start_unlearning(control: control_pb2_grpc.ControlServiceStub, base: str) -> str:
    spec = unlearning_spec_to_proto(dataclasses.replace(UNLEARNING, base_version=base))
    request = control_pb2.StartUnlearningRequest(spec=spec)
    job: control_pb2.JobInfo = control.StartUnlearning(request)
    return job.job_id


def result(info: control_pb2.JobInfo) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(info.result_json)
    return data


def version_digest(control: control_pb2_grpc.ControlServiceStub, version_id: str) -> str:
    models = control.ListModels(control_pb2.ListModelsRequest()).models
    return str(next(m.digest for m in models if m.version_id == version_id))


def export(control: control_pb2_grpc.ControlServiceStub, version_id: str) -> bytes:
    request = control_pb2.ExportModelRequest(version_id=version_id)
    return b"".join(c.data for c in control.ExportModel(request, timeout=30))


def rounds(info: control_pb2.JobInfo, phase: str) -> list[control_pb2.RoundInfo]:
    return sorted((r for r in info.rounds if r.phase == phase), key=lambda r: r.round)


def stored_artifacts(fed: LocalFederation) -> set[str]:
    return {p.name for p in (fed.work_dir / "state" / "artifacts" / "sha256").glob("*/*")}


# --------------------------------------------------------------------------- the test


def test_hostile_corpus_is_refused_and_changes_no_aggregate(hostile: Hostile) -> None:
    fed = hostile.fed
    control = fed.control()

    # The same jobs without mallory: the aggregates her attacks must not change.
    ref_train = wait_job(control, start_training(control))
    ref_version = result(ref_train)["version_id"]
    aggregates = {json.loads(r.metrics_json)["model"] for r in rounds(ref_train, "train")}
    honest_uploads = stored_artifacts(fed) - aggregates
    ref_unlearn = wait_job(control, start_unlearning(control, ref_version))
    fed.withdraw_all()  # the attacked jobs apply the same request to a clean ledger

    # Mallory joins with a valid token and answers every task with attacks.
    ref_model = version_digest(control, ref_version)  # stored, but no task of hers names it
    attack = Attack(hostile, foreign_upload="", foreign_model=ref_model)
    try:
        attack.mallory.register(SUMMARY)
        train_job = start_training(control)
        # Her first task names the initial model; what else is stored are p0's and p1's
        # updates from the reference job.
        first = attack.mallory.pull(wait_s=30)
        assert first is not None and first.kind == TRAIN_KIND and first.round == 1
        foreign = sorted(honest_uploads - {first.model_blob_id})
        assert foreign, "no honest upload in the store"
        attack.foreign_upload = foreign[0]
        attack.on_task(first)
        train = attack.serve(train_job)
        attacked_version = result(train)["version_id"]
        unlearn = attack.serve(start_unlearning(control, attacked_version))
    finally:
        attack.close()

    print("\n".join(map(str, attack.outcomes)))  # the corpus and its answers (pytest -s)
    failed = [str(o) for o in attack.outcomes if not o.ok]
    assert not failed, "\n".join(failed)
    names = [o.case.name for o in attack.outcomes]
    assert len(names) == len(set(names)), "case names must be distinct"
    assert len(names) >= MIN_CASES, len(names)
    assert not attack.train_attacks and not attack.adapter_attacks and not attack.eval_attacks
    assert attack.sensitivity_done and attack.declined == 0

    # Every round: the honest two counted, mallory refused for her attack's reason, and the
    # aggregate bit-identical to the round of the reference job.
    for phase, ref, got in (
        ("train", ref_train, train),
        ("sensitivity", ref_unlearn, unlearn),
        ("adapter", ref_unlearn, unlearn),
        ("evaluate", ref_train, train),
        ("evaluate", ref_unlearn, unlearn),
    ):
        expected, actual = rounds(ref, phase), rounds(got, phase)
        assert [r.round for r in actual] == [r.round for r in expected], phase
        for want, have in zip(expected, actual, strict=True):
            assert list(have.participants) == list(want.participants) == list(HONEST)
            want_m, have_m = json.loads(want.metrics_json), json.loads(have.metrics_json)
            assert (
                attack.expected_failures[(got.job_id, phase, have.round)]
                in have_m["failures"][MALLORY]
            )
            for key in ("model", "ranking", "train_loss", "accuracy", "correct", "total"):
                assert have_m.get(key) == want_m.get(key), (phase, have.round, key)

    # The final models, trained and unlearned, are bit-identical to the reference ones.
    assert version_digest(control, attacked_version) == version_digest(control, ref_version)
    assert export(control, attacked_version) == export(control, ref_version)
    got_unlearned, ref_unlearned = result(unlearn)["version_id"], result(ref_unlearn)["version_id"]
    assert version_digest(control, got_unlearned) == version_digest(control, ref_unlearned)
    assert result(unlearn)["adapter_digest"] == result(ref_unlearn)["adapter_digest"]

    # Nobody fell over: the coordinator serves, the honest agents still run.
    assert fed.coordinator is not None and fed.coordinator.poll() is None
    assert all(proc.poll() is None for proc in fed.participants.values())
    online = fed.wait_online(len(HONEST) + 1)
    assert set(HONEST) | {MALLORY} <= set(online)


def test_corrupt_request_bytes_get_invalid_argument(hostile: Hostile) -> None:
    client = Client(hostile.fed.address, MALLORY, hostile.token("participant", MALLORY))
    try:
        code, details = attempt(lambda: described(client.raw_unary("Heartbeat", b"\xff" * 4)))
        assert client.serving()
    finally:
        client.close()
    assert (code, "not a valid Heartbeat request" in details) == (INVALID, True), (code, details)
