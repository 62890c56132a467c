"""Restarts, reconnects, deadlines and bad input, with real processes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from bench import raw_participant
from bench.raw_participant import RawParticipant
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.channels import create_channel
from fused.common.rpc.control_convert import training_spec_to_proto
from fused.common.rpc.metering import MD_PARTICIPANT
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.participant.site import builtin_summary
from fused.proto.v1 import common_pb2, control_pb2, participant_pb2, participant_pb2_grpc
from fused.tools.launch import LocalFederation
from tests.integration.conftest import NUM_PARTICIPANTS
from tests.integration.test_training import run_job

Held = tuple[raw_participant.RawParticipant, str, int]
QUICK = TrainingSpec(
    rounds=1,
    train=TrainConfig(lr=0.05, batch_size=32),
    min_participants=NUM_PARTICIPANTS,
    round_deadline_s=60,
    evaluate_each_round=False,
)


def participant_stub(fed: LocalFederation) -> participant_pb2_grpc.ParticipantServiceStub:
    return participant_pb2_grpc.ParticipantServiceStub(create_channel(fed.address))


def register_ghost(fed: LocalFederation, pid: str) -> None:
    """A participant that registers and then never pulls a task."""
    summary = builtin_summary("mlp", [5] * 10, 0, "digits")
    participant_stub(fed).Register(
        participant_pb2.RegisterRequest(
            protocol_version=PROTOCOL_VERSION, participant_id=pid, data=summary
        ),
        timeout=10,
    )


def held_task(fed: LocalFederation, pid: str) -> contextlib.AbstractContextManager[Held]:
    """A hand-written participant holding an open task of a QUICK training job."""
    return raw_participant.held_task(fed.address, fed.control(), pid, QUICK)


def test_round_deadline_goes_on_without_a_silent_participant(federation: LocalFederation) -> None:
    register_ghost(federation, "ghost")
    spec = dataclasses.replace(QUICK, round_deadline_s=10.0)
    started = time.monotonic()
    info = run_job(federation, spec)
    assert info.status == "completed", info.reason
    assert time.monotonic() - started < 60
    train = next(r for r in info.rounds if r.phase == "train")
    assert "ghost" not in train.participants
    why = json.loads(train.metrics_json)["failures"]["ghost"]
    # the deadline and the offline reaper (both 10 s here) race: either names the silence
    assert "no result within 10 s" in why or "went silent (10 s without a heartbeat)" in why, why


def test_job_fails_with_a_reason_when_quorum_is_missing(federation: LocalFederation) -> None:
    spec = dataclasses.replace(QUICK, min_participants=9, wait_for_participants_s=1.0)
    info = run_job(federation, spec)
    assert info.status == "failed"
    assert "of the 9 required participants were online" in info.reason


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"round_deadline_s": 0.0}, "round_deadline_s must be > 0"),
        ({"init_version": "m-missing"}, "not a known model version"),
        ({"train": TrainConfig(lr=0.0)}, "lr must be > 0"),
        ({}, "starts from exactly one of init_version"),  # no initial weights
    ],
)
def test_invalid_training_spec_is_rejected(
    federation: LocalFederation, change: dict[str, object], fragment: str
) -> None:
    spec = dataclasses.replace(QUICK, **change)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as err:
        federation.control().StartTraining(
            control_pb2.StartTrainingRequest(spec=training_spec_to_proto(spec)), timeout=10
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (err.value.details() or "")


def test_unknown_names_give_not_found(federation: LocalFederation) -> None:
    stub = federation.control()
    for call in (
        lambda: stub.GetJob(control_pb2.GetJobRequest(job_id="job-nope"), timeout=10),
        lambda: list(stub.WatchJob(control_pb2.WatchJobRequest(job_id="job-nope"), timeout=10)),
        lambda: list(stub.ExportModel(control_pb2.ExportModelRequest(version_id="m-nope"))),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_bad_participant_calls_are_refused_and_the_coordinator_stays_up(
    federation: LocalFederation,
) -> None:
    stub = participant_stub(federation)
    md = ((MD_PARTICIPANT, "p0"),)
    cases: list[tuple[Callable[[], object], grpc.StatusCode]] = [
        (
            lambda: stub.PullTask(participant_pb2.PullTaskRequest(participant_id="stranger")),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            lambda: stub.Register(
                participant_pb2.RegisterRequest(
                    protocol_version=PROTOCOL_VERSION, participant_id="../etc"
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: stub.UploadBlob(
                iter([common_pb2.BlobChunk(blob_id="0" * 64, data=b"abc", total_size=3)]),
                metadata=md,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,  # no open task of p0 (uploads belong to one)
        ),
        (
            lambda: stub.UploadBlob(
                iter([common_pb2.BlobChunk(blob_id="0" * 64, data=b"a", total_size=1 << 40)]),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,  # over the size limit
        ),
        (
            lambda: stub.UploadBlob(iter([common_pb2.BlobChunk(data=b"x")])),
            grpc.StatusCode.FAILED_PRECONDITION,  # no registered caller
        ),
        (
            lambda: list(
                stub.DownloadBlob(
                    participant_pb2.DownloadBlobRequest(blob_id="a" * 64), metadata=md
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,  # no open task of p0 names it
        ),
        (
            lambda: stub.PushResult(
                participant_pb2.PushResultRequest(participant_id="p0", task_id="t"), metadata=md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,  # no outcome set
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is code, err.value.details()
        assert err.value.details()
    # Everything still works (the ghost of another test may be online until its deadline).
    info = run_job(federation, dataclasses.replace(QUICK, round_deadline_s=30.0))
    assert info.status == "completed", info.reason


def test_state_survives_restart_and_agents_reconnect(digits_shards: Path, tmp_path: Path) -> None:
    with LocalFederation(tmp_path) as fed:
        fed.start_coordinator("--heartbeat-interval-s", "1")
        for i in range(NUM_PARTICIPANTS):
            fed.start_participant(digits_shards / f"p{i}", "--backoff-max-s", "2")
        fed.wait_online(NUM_PARTICIPANTS)
        first = run_job(fed, QUICK)
        assert first.status == "completed", first.reason
        port = fed.port
        assert fed.stop_coordinator() == 0  # SIGTERM: graceful exit
        fed.start_coordinator("--heartbeat-interval-s", "1", port=port)
        jobs = fed.control().ListJobs(control_pb2.ListJobsRequest()).jobs
        assert [j.job_id for j in jobs] == [first.job_id]
        version_id = json.loads(first.result_json)["version_id"]
        models = fed.control().ListModels(control_pb2.ListModelsRequest()).models
        assert [m.version_id for m in models] == [version_id] and models[0].active
        chunks = list(fed.control().ExportModel(control_pb2.ExportModelRequest()))
        assert hashlib.sha256(b"".join(c.data for c in chunks)).hexdigest() == models[0].digest
        fed.wait_online(NUM_PARTICIPANTS, timeout_s=60)  # agents came back on their own
        second = run_job(fed, dataclasses.replace(QUICK, init_version=version_id))
        assert second.status == "completed", second.reason


def test_a_45_mb_artifact_moves_in_chunks(federation: LocalFederation) -> None:
    """A ResNet-18-sized payload crosses with the modest message limit, both ways."""
    payload = hashlib.sha256(b"seed").digest() * (45 * 2**20 // 32)
    digest = hashlib.sha256(payload).hexdigest()
    with held_task(federation, "bulk") as (raw, job_id, round_number):
        stub, md = raw.stub, raw.md
        sent = raw_participant.chunks(payload, job_id, round_number, size=1 << 20)
        reply = stub.UploadBlob(sent, metadata=md, timeout=120)
        assert reply.blob_id == digest and reply.size == len(payload)
        request = participant_pb2.DownloadBlobRequest(blob_id=digest)
        back = b"".join(c.data for c in stub.DownloadBlob(request, metadata=md, timeout=120))
        assert back == payload
        resumed = participant_pb2.DownloadBlobRequest(blob_id=digest, offset=len(payload) - 10)
        tail = b"".join(c.data for c in stub.DownloadBlob(resumed, metadata=md, timeout=120))
        assert tail == payload[-10:]


def test_uploads_are_idempotent_and_resume_after_a_broken_stream(
    federation: LocalFederation,
) -> None:
    with held_task(federation, "bulk") as (raw, job_id, round_number):
        resume_after_a_broken_stream(raw, job_id, round_number)


def resume_after_a_broken_stream(raw: RawParticipant, job_id: str, round_number: int) -> None:
    payload = hashlib.sha256(b"resume").digest() * (6 * 2**20 // 32)  # 6 MiB
    digest = hashlib.sha256(payload).hexdigest()
    stub, md = raw.stub, raw.md
    step = 1 << 20

    def chunks(start: int, stop: int) -> Iterator[common_pb2.BlobChunk]:
        for o in range(start, stop, step):
            yield common_pb2.BlobChunk(
                blob_id=digest,
                offset=o,
                data=payload[o : o + step],
                total_size=len(payload),
                job_id=job_id,
                round=round_number,
            )

    def broken() -> Iterator[common_pb2.BlobChunk]:
        yield from chunks(0, 3 * step)
        time.sleep(0.5)  # let the coordinator take in what was sent
        raise ConnectionError("the link went down")

    with pytest.raises(grpc.RpcError):
        stub.UploadBlob(broken(), metadata=md, timeout=60)
    status = stub.GetUploadStatus(participant_pb2.UploadStatusRequest(blob_id=digest), metadata=md)
    assert not status.complete and status.offset == 3 * step
    with pytest.raises(grpc.RpcError) as err:  # starting over is refused: resume instead
        stub.UploadBlob(chunks(0, len(payload)), metadata=md, timeout=60)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"resume at offset {3 * step}" in (err.value.details() or "")
    reply = stub.UploadBlob(chunks(status.offset, len(payload)), metadata=md, timeout=60)
    assert reply.blob_id == digest and reply.size == len(payload)
    done = stub.GetUploadStatus(participant_pb2.UploadStatusRequest(blob_id=digest), metadata=md)
    assert done.complete
    again = stub.UploadBlob(chunks(0, len(payload)), metadata=md, timeout=60)  # idempotent
    assert again.blob_id == digest
    request = participant_pb2.DownloadBlobRequest(blob_id=digest)
    assert b"".join(c.data for c in stub.DownloadBlob(request, metadata=md)) == payload
