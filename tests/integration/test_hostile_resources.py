"""Resource abuse against a real coordinator over loopback: upload quotas, stream caps, stalled
streams, uploads without a task, collection during an upload, an honest agent whose result
is refused (it must keep serving), and the health port's own limits.

Two honest agents (p0, p1) and hand-written participants; the coordinator runs with small
limits (a 2 MiB quota, 2 streams, a 3 s idle timeout, 512 KiB/s after a 2 s grace) so that
every limit is reached in a few seconds.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.raw_participant import (
    Answer,
    RawParticipant,
    byte_chunks,
    chunks,
    gated,
    sha256,
    trickle,
)
from fused.client import initial_weights
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.participant.site import builtin_summary
from fused.proto.v1 import control_pb2, participant_pb2, participant_pb2_grpc
from fused.tools.launch import LocalFederation, scrape

OK = grpc.StatusCode.OK
QUOTA = 2 << 20
MAX_UPLOAD = 1 << 20
LIMITS = (
    *("--max-upload-mb", "1", "--upload-quota-mb", "2", "--upload-max-streams", "2"),
    *("--upload-idle-timeout-s", "3", "--upload-min-rate-kib-s", "512"),
    *("--upload-rate-grace-s", "2", "--offline-after-s", "30", "--heartbeat-interval-s", "1"),
    *("--health-listen", "127.0.0.1:0", "--health-max-connections", "4"),
)
HONEST = ("p0", "p1")


@dataclass
class Bench:
    fed: LocalFederation
    mallory: RawParticipant
    held: list[str] = field(default_factory=list)  # digests mallory holds, for the quota


@pytest.fixture(scope="module")
def bench(digits_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    with LocalFederation(tmp_path_factory.mktemp("resources")) as fed:
        fed.start_coordinator(*LIMITS)
        for pid in HONEST:
            fed.start_participant(digits_shards / pid)
        fed.wait_online(len(HONEST))
        mallory = RawParticipant(fed.address, "mallory")
        try:
            yield Bench(fed, mallory)
        finally:
            mallory.close()


def start_training(fed: LocalFederation, min_participants: int) -> str:
    spec = TrainingSpec(
        rounds=1,
        train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=3),
        min_participants=min_participants,
        round_deadline_s=120,
        wait_for_participants_s=30,
        seed=3,
    )
    return str(initial_weights.start_training(fed.control(), spec).job_id)


def finished(fed: LocalFederation, job_id: str) -> control_pb2.JobInfo:
    control = fed.control()
    list(control.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=120))
    info: control_pb2.JobInfo = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
    return info


def failures(info: control_pb2.JobInfo) -> dict[str, str]:
    found: dict[str, str] = json.loads(info.rounds[0].metrics_json)["failures"]
    return found


def refusals(fed: LocalFederation) -> dict[str, float]:
    samples = scrape(fed.metrics_port)
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "fused_upload_refusals_total"
    }


# --------------------------------------------------------------------------- agents


def test_an_agent_whose_result_is_refused_keeps_serving(bench: Bench) -> None:
    """Someone re-registers p1 claiming 10 training samples: p1's honest result (its real
    sample count) is refused with INVALID_ARGUMENT. p1 reports it and takes the next task."""
    fed = bench.fed
    control = fed.control()
    listed = control.ListParticipants(control_pb2.ListParticipantsRequest()).participants
    true = next(p for p in listed if p.participant_id == "p1")
    impostor = RawParticipant(fed.address, "p1")
    try:
        small = builtin_summary(true.workload, [1] * 10, true.num_test, true.dataset)
        impostor.register(small)
        refused = finished(fed, start_training(fed, min_participants=1))
        counts = list(true.class_counts)
        impostor.register(builtin_summary(true.workload, counts, true.num_test, true.dataset))
    finally:
        impostor.close()
    assert refused.status == "completed", refused.reason
    assert list(refused.rounds[0].participants) == ["p0"]
    reason = failures(refused)["p1"]
    assert f"num_examples {true.num_train} is not within the 10 training samples" in reason
    assert fed.participants["p1"].poll() is None, "p1 exited over a refused result"
    after = finished(fed, start_training(fed, min_participants=2))
    assert after.status == "completed", after.reason
    assert list(after.rounds[0].participants) == ["p0", "p1"]
    results = scrape(fed.participant_metrics["p1"])
    assert results[("fused_participant_results_total", (("outcome", "refused"),))] == 1
    assert results[("fused_participant_results_total", (("outcome", "accepted"),))] >= 1


# --------------------------------------------------------------------------- uploads


def test_an_upload_without_an_open_task_is_refused(bench: Bench) -> None:
    m = bench.mallory
    m.register()
    blob = b"no task" * 100
    assert m.upload(chunks(blob, "", 0)) == Answer(
        grpc.StatusCode.FAILED_PRECONDITION,
        "an upload must name the job and round of an open task of the uploader",
    )
    jobs = bench.fed.control().ListJobs(control_pb2.ListJobsRequest()).jobs
    done = jobs[0].job_id
    assert m.upload(chunks(blob, done, 1)) == Answer(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"no open task of mallory in round 1 of job {done!r}: an upload belongs to a task",
    )
    assert refusals(bench.fed)["no_task"] == 2


@pytest.fixture(scope="class")
def task(bench: Bench) -> Iterator[participant_pb2.Task]:
    """Mallory's open task in a training job with the honest two; declined at the end."""
    job_id = start_training(bench.fed, min_participants=2)
    held = bench.mallory.pull_task()
    assert held.job_id == job_id
    yield held
    bench.mallory.decline(held)
    assert declining(bench, job_id).status == "completed"


def declining(bench: Bench, job_id: str) -> control_pb2.JobInfo:
    """Mallory declines every further task of the job (an evaluation) until it ends."""
    control = bench.fed.control()
    while True:
        info: control_pb2.JobInfo = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
        if info.status in ("completed", "failed"):
            return info
        task = bench.mallory.pull(wait_s=0.5)
        if task is not None:
            bench.mallory.decline(task)


def part_exists(fed: LocalFederation, pid: str, digest: str) -> bool:
    return (fed.work_dir / "state" / "uploads" / pid / f"{digest}.part").exists()


def wait_for_parts(fed: LocalFederation, pid: str, digests: list[str]) -> None:
    deadline = threading.Event()
    for _ in range(200):
        if all(part_exists(fed, pid, d) for d in digests):
            return
        deadline.wait(0.05)
    raise TimeoutError(f"the streams of {digests} were not admitted")


class TestWhileMalloryHoldsATask:
    """Each limit in turn, all uploads bound to one open task of mallory's."""

    def test_concurrent_upload_streams_are_capped(
        self, bench: Bench, task: participant_pb2.Task
    ) -> None:
        m, gate = bench.mallory, threading.Event()
        blobs = [bytes([i]) * 1000 for i in (1, 2)]
        streams = [m.start_upload(gated(chunks(b, task.job_id, task.round, size=500), gate, 1))
                   for b in blobs]  # fmt: skip
        try:
            wait_for_parts(bench.fed, "mallory", [sha256(b) for b in blobs])
            third = m.upload(chunks(b"\3" * 1000, task.job_id, task.round))
        finally:
            gate.set()
        assert third == Answer(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many concurrent uploads: 2 streams open (limit 2)",
        )
        for stream, blob in zip(streams, blobs, strict=True):
            assert stream.result(timeout=30).blob_id == sha256(blob)
            bench.held.append(sha256(blob))
        assert refusals(bench.fed)["streams"] == 1

    def test_an_idle_upload_stream_is_cut(self, bench: Bench, task: participant_pb2.Task) -> None:
        m, gate = bench.mallory, threading.Event()
        blob = b"idle" * 250
        try:
            got = m.upload(gated(chunks(blob, task.job_id, task.round, size=100), gate, 1))
        finally:
            gate.set()
        assert got == Answer(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "upload stream sent nothing for 3 s; resume at offset 100",
        )
        assert m.upload_offset(sha256(blob)) == 100
        bench.held.append("idle:100")
        assert refusals(bench.fed)["idle"] == 1

    def test_a_slow_upload_stream_is_cut(self, bench: Bench, task: participant_pb2.Task) -> None:
        """A slow loris: one byte every half second, never idle for long."""
        m, stop = bench.mallory, threading.Event()
        blob = b"slow" * 250
        try:
            got = m.upload(trickle(byte_chunks(blob, task.job_id, task.round), 0.5, stop))
        finally:
            stop.set()
        assert got.code == grpc.StatusCode.DEADLINE_EXCEEDED, got
        match = re.fullmatch(
            r"upload stream too slow: (\d+) bytes in 4 s, under 524288 bytes/s; resume at "
            r"offset (\d+)",
            got.details,
        )
        assert match is not None and match[1] == match[2], got
        assert m.upload_offset(sha256(blob)) == int(match[2])
        bench.held.append(f"slow:{match[2]}")
        assert refusals(bench.fed)["slow"] == 1

    def test_the_upload_quota_is_enforced(self, bench: Bench, task: participant_pb2.Task) -> None:
        m = bench.mallory
        held = 1000 * sum(1 for h in bench.held if ":" not in h)
        held += sum(int(h.split(":")[1]) for h in bench.held if ":" in h)
        big = [bytes([i]) * MAX_UPLOAD for i in (7, 8)]
        assert m.upload(chunks(big[0], task.job_id, task.round)).code == OK
        assert m.upload(chunks(big[1], task.job_id, task.round)) == Answer(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"upload quota exceeded: {held + MAX_UPLOAD} bytes held and {MAX_UPLOAD} declared, "
            f"above the quota of {QUOTA} bytes (uploads no accepted result names are kept until "
            "no job runs)",
        )
        assert refusals(bench.fed)["quota"] == 1


def test_collection_never_removes_a_part_in_use(bench: Bench) -> None:
    """The job ends (cancelled) while mallory streams an upload for its task: collection
    runs, deletes her abandoned parts, keeps the streaming one, and the upload completes."""
    fed, m, gate = bench.fed, bench.mallory, threading.Event()
    job_id = start_training(fed, min_participants=3)
    held = m.pull_task()
    blob = b"collected?" * 100
    stream = m.start_upload(gated(chunks(blob, held.job_id, held.round, size=500), gate, 1))
    try:
        wait_for_parts(fed, "mallory", [sha256(blob)])
        fed.control().CancelJob(control_pb2.CancelJobRequest(job_id=job_id))
        info = finished(fed, job_id)
        abandoned = m.upload_offset(sha256(b"idle" * 250))
    finally:
        gate.set()
    assert (info.status, info.reason) == ("failed", "cancelled by an operator")
    assert abandoned == 0, "collection did not run"
    reply = stream.result(timeout=30)
    assert (reply.blob_id, reply.size) == (sha256(blob), len(blob))


# --------------------------------------------------------------------------- the health port


def health_check(port: int) -> Answer:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError as exc:
            return Answer(exc.code(), "")
    return Answer(OK, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def accepted(port: int) -> socket.socket:
    """A connection that sends nothing, once the server has taken it (it sends its settings)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(64), "the server closed the connection"
    return sock


def test_the_health_port_answers_only_health_within_its_own_cap(bench: Bench) -> None:
    port = bench.fed.health_port
    assert health_check(port) == Answer(OK, "SERVING")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        with pytest.raises(grpc.RpcError) as other:
            stub.Register(
                participant_pb2.RegisterRequest(
                    protocol_version=PROTOCOL_VERSION, participant_id="p9"
                ),
                timeout=5,
            )
        big = health_pb2.HealthCheckRequest(service="x" * 2048)
        with pytest.raises(grpc.RpcError) as large:
            health_pb2_grpc.HealthStub(channel).Check(big, timeout=5)
    assert other.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert large.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    held = [accepted(port) for _ in range(4)]  # its cap
    try:
        assert health_check(port).code is grpc.StatusCode.UNAVAILABLE
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):  # until the server has seen the four go
        if health_check(port).code is OK:
            break
        threading.Event().wait(0.2)
    assert health_check(port) == Answer(OK, "SERVING")
