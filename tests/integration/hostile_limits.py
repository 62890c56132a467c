"""Oversized and malformed inputs for test_hostile_limits: each request, and the exact status
and message the coordinator must answer it with (limits.py's table, checked at the edge)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.proto.v1 import common_pb2, control_pb2, control_pb2_grpc, participant_pb2
from tests.integration.hostile import Client, Metadata, described, sha256
from tests.integration.hostile_names import DENIED, INVALID, MALLORY, SUMMARY

MB = 1 << 20
DATASET = 1_100_000  # the data set name: 1.1 million characters


@dataclass(frozen=True)
class Exact:
    """A request and the one answer it must get, word for word."""

    name: str
    call: Callable[[], str]
    code: grpc.StatusCode
    message: str


def data(**fields: object) -> participant_pb2.DataSummary:
    summary = participant_pb2.DataSummary()
    summary.CopyFrom(SUMMARY)
    for name, value in fields.items():
        field = getattr(summary, name)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(summary, name, value)
    return summary


def long(what: str, field: str, n: int, letter: str) -> str:
    return f"{what}{field} is {n} characters long ('{letter * 16}...'); the limit is 64"


def register_cases(m: Client) -> list[Exact]:
    def register(summary: participant_pb2.DataSummary, version: str = "hostile/1") -> str:
        request = participant_pb2.RegisterRequest(
            protocol_version=PROTOCOL_VERSION,
            participant_id=MALLORY,
            data=summary,
            agent_version=version,
        )
        return described(m.stub.Register(request, metadata=m.md, timeout=30))

    return [
        Exact(
            "registration with a 1.1-million-character data set",
            lambda: register(data(dataset="d" * DATASET)),
            INVALID,
            long("", "DataSummary.dataset", DATASET, "d"),
        ),
        Exact(
            "registration with a 4096-character agent version",
            lambda: register(SUMMARY, "v" * 4096),
            INVALID,
            long("", "RegisterRequest.agent_version", 4096, "v"),
        ),
        Exact(
            "registration with num_train 2^63 (SQLite overflows)",
            lambda: register(data(num_train=2**63)),
            INVALID,
            "DataSummary.num_train 9223372036854775808 is above the limit of 2147483647",
        ),
        Exact(
            "registration with a class count of 2^62",
            lambda: register(data(class_counts=[2**62] + [10] * 9, num_train=2**62 + 90)),
            INVALID,
            "DataSummary.class_counts[0] 4611686018427387904 is above the limit of 2147483647",
        ),
        Exact(
            "registration with num_test 2^64 - 1",
            lambda: register(data(num_test=2**64 - 1)),
            INVALID,
            "DataSummary.num_test 18446744073709551615 is above the limit of 2147483647",
        ),
        Exact(
            "registration with a newline in the data set",
            lambda: register(data(dataset="digits\nforged")),
            INVALID,
            "DataSummary.dataset holds a control character at position 6",
        ),
        Exact(
            "registration under a 1 MB id",
            lambda: described(m.register(SUMMARY, participant_id="m" * MB)),
            INVALID,
            long("", "RegisterRequest.participant_id", MB, "m"),
        ),
    ]


def id_cases(m: Client, operator: control_pb2_grpc.ControlServiceStub) -> list[Exact]:
    def push(task_id: str) -> str:
        error = participant_pb2.TaskError(message="x")
        request = participant_pb2.PushResultRequest(
            participant_id=MALLORY, task_id=task_id, error=error
        )
        return described(m.push(request))

    def beat(task_id: str) -> str:
        request = participant_pb2.HeartbeatRequest(participant_id=MALLORY, task_id=task_id)
        return described(m.stub.Heartbeat(request, metadata=m.md, timeout=30))

    def ask(participant_id: str, sample_ids: list[int]) -> str:
        request = participant_pb2.ForgettingRequest(
            participant_id=participant_id, sample_ids=sample_ids
        )
        return described(m.stub.RequestForgetting(request, metadata=m.md, timeout=30))

    huge_chunk = common_pb2.BlobChunk(blob_id=sha256(b"x"), data=b"x", total_size=1)
    huge_chunk.job_id = "j" * MB
    layers = control_pb2.UnlearningSpec(layers=[f"layer{i}" for i in range(20_000)])
    init = control_pb2.TrainingSpec(rounds=1, init_version="v" * MB)
    watch = control_pb2.WatchJobRequest(job_id="job-x", after_seq=2**64 - 1)
    return [
        Exact(
            "mallory asks to forget another participant",
            lambda: ask("p0", []),
            DENIED,
            "authenticated as 'mallory'; the request names participant 'p0'",
        ),
        Exact(
            "mallory asks to forget another participant's samples",
            lambda: ask("p1", [1, 2, 3]),
            DENIED,
            "authenticated as 'mallory'; the request names participant 'p1'",
        ),
        Exact(
            "a forgetting request of 60,000 sample ids",
            lambda: ask(MALLORY, list(range(60_000))),
            INVALID,
            "ForgettingRequest.sample_ids has 60000 entries; the limit is 50000",
        ),
        Exact(
            "result for a 1 MB task id",
            lambda: push("t" * MB),
            INVALID,
            long("result rejected: ", "PushResultRequest.task_id", MB, "t"),
        ),
        Exact(
            "result for a task id with a newline",
            lambda: push("t\n2026-01-01 00:00:00 coordinator INFO forged"),
            INVALID,
            "result rejected: PushResultRequest.task_id holds a control character at position 1",
        ),
        Exact(
            "heartbeat for a 1 MB task id",
            lambda: beat("t" * MB),
            INVALID,
            long("", "HeartbeatRequest.task_id", MB, "t"),
        ),
        Exact(
            "download of a 1 MB blob id",
            lambda: described(m.download("b" * MB)),
            INVALID,
            long("", "DownloadBlobRequest.blob_id", MB, "b"),
        ),
        Exact(
            "upload chunk naming a 1 MB job",
            lambda: described(m.upload([huge_chunk])),
            INVALID,
            long("upload rejected: ", "BlobChunk.job_id", MB, "j"),
        ),
        Exact(
            "GetJob of a 1 MB job id",
            lambda: str(operator.GetJob(control_pb2.GetJobRequest(job_id="j" * MB), timeout=30)),
            INVALID,
            long("", "GetJobRequest.job_id", MB, "j"),
        ),
        Exact(
            "WatchJob from sequence 2^64 - 1",
            lambda: str(list(operator.WatchJob(watch, timeout=30))),
            INVALID,
            "WatchJobRequest.after_seq 18446744073709551615 is above the limit of "
            "9223372036854775807",
        ),
        Exact(
            "training from a 1 MB version id",
            lambda: str(operator.StartTraining(control_pb2.StartTrainingRequest(spec=init))),
            INVALID,
            long("invalid training spec: ", "TrainingSpec.init_version", MB, "v"),
        ),
        Exact(
            "unlearning 20,000 layers",
            lambda: str(operator.StartUnlearning(control_pb2.StartUnlearningRequest(spec=layers))),
            INVALID,
            "invalid unlearning spec: UnlearningSpec.layers has 20000 entries; the limit is 10000",
        ),
    ]


def ledger_cases(operator: control_pb2_grpc.ControlServiceStub) -> list[Exact]:
    """Withdrawal, consolidation and dropping versions: each bad request answered exactly,
    nothing changed."""

    def withdraw(entry_id: str) -> str:
        request = control_pb2.WithdrawalRequest(entry_id=entry_id)
        return str(operator.WithdrawRequest(request, timeout=30))

    def drop(*ids: str) -> str:
        request = control_pb2.DropVersionsRequest(version_ids=ids)
        return str(operator.DropVersions(request, timeout=30))

    def consolidate(base: str) -> str:
        spec = control_pb2.ConsolidationSpec(
            base_version=base, min_participants=1, round_deadline_s=60
        )
        request = control_pb2.StartConsolidationRequest(spec=spec)
        return str(operator.StartConsolidation(request, timeout=30))

    def adapter(version_id: str) -> str:
        request = control_pb2.VersionRequest(version_id=version_id)
        return str(list(operator.ExportAdapter(request, timeout=30)))

    def receipt(version_id: str) -> str:
        return str(operator.GetReceipt(control_pb2.VersionRequest(version_id=version_id)))

    def decide(request_id: str, approve: bool) -> str:
        decision = control_pb2.ForgetDecision(request_id=request_id, approve=approve)
        return str(operator.DecideForgetRequest(decision, timeout=30))

    return [
        Exact(
            "approving an unknown forget request",
            lambda: decide("r-ghost", True),
            grpc.StatusCode.NOT_FOUND,
            "no forget request 'r-ghost'",
        ),
        Exact(
            "rejecting a 1 MB request id",
            lambda: decide("r" * MB, False),
            INVALID,
            long("cannot decide: ", "ForgetDecision.request_id", MB, "r"),
        ),
        Exact(
            "the receipt of an unknown version",
            lambda: receipt("m-ghost"),
            grpc.StatusCode.NOT_FOUND,
            "no model version 'm-ghost'",
        ),
        Exact(
            "the adapter file of an unknown version",
            lambda: adapter("m-ghost"),
            grpc.StatusCode.NOT_FOUND,
            "no model version 'm-ghost'",
        ),
        Exact(
            "withdrawing a 1 MB ledger entry",
            lambda: withdraw("f" * MB),
            INVALID,
            long("", "WithdrawalRequest.entry_id", MB, "f"),
        ),
        Exact(
            "withdrawing an unknown ledger entry",
            lambda: withdraw("f-ghost"),
            grpc.StatusCode.NOT_FOUND,
            "no ledger entry 'f-ghost'",
        ),
        Exact("dropping no version", drop, INVALID, "name at least one version"),
        Exact(
            "dropping 2,000 versions",
            lambda: drop(*(f"m-{i}" for i in range(2000))),
            INVALID,
            "DropVersionsRequest.version_ids has 2000 entries; the limit is 1000",
        ),
        Exact(
            "dropping an unknown version",
            lambda: drop("m-ghost"),
            grpc.StatusCode.NOT_FOUND,
            "no model version 'm-ghost'",
        ),
        Exact(
            "consolidating an unknown version",
            lambda: consolidate("m-ghost"),
            INVALID,
            "invalid consolidation spec: no model version 'm-ghost' to consolidate",
        ),
        Exact(
            "consolidating a 1 MB version id",
            lambda: consolidate("m" * MB),
            INVALID,
            long("invalid consolidation spec: ", "ConsolidationSpec.base_version", MB, "m"),
        ),
    ]


def metadata_cases(m: Client) -> list[Exact]:
    def pull(md: Metadata) -> str:
        return described(m.pull(0.0, md=(*m.md, *md)))

    return [
        Exact(
            "a 1000-character job in the metadata",
            lambda: pull(((MD_JOB, "j" * 1000),)),
            INVALID,
            "metadata fused-job is 1000 characters long ('jjjjjjjjjjjjjjjj...'); the limit is 64",
        ),
        Exact(
            "a 4000-character participant claim",
            lambda: pull(((MD_PARTICIPANT, "p" * 4000),)),
            DENIED,
            f"authenticated as 'mallory' but the call claims to be '{'p' * 64}...[4000 chars]'",
        ),
    ]
