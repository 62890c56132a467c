"""The hostile corpus's requests that must be refused while mallory's first task stays open:
credentials, unregistered callers, malformed messages, registration and downloads."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import grpc

from fused.common.rpc.control_convert import training_spec_to_proto
from fused.common.rpc.metering import MD_PARTICIPANT
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.proto.v1 import control_pb2, control_pb2_grpc, participant_pb2
from tests.integration.hostile import (
    Client,
    bearer,
    chunked,
    described,
    sha256,
    with_unknown_field,
)
from tests.integration.hostile_names import (
    DENIED,
    EVE,
    INVALID,
    MALLORY,
    PRECONDITION,
    SUMMARY,
    TRAINING,
    UNAUTHENTICATED,
)
from tests.integration.hostile_uploads import result_cases, upload_cases

if TYPE_CHECKING:
    from tests.integration.hostile_attack import Attack


def open_task_cases(attack: Attack, task: participant_pb2.Task) -> None:
    """Requests that must be refused without touching mallory's open task."""
    eve = attack.eve
    job, tid, model_blob = task.job_id, task.task_id, task.model_blob_id
    credential_cases(attack, task)

    # a participant that never registered
    attack.check(
        "unregistered participant pulls a task",
        lambda: described(eve.pull(0.0)),
        PRECONDITION,
        f"participant {EVE!r} is not registered; call Register first",
    )
    attack.check(
        "unregistered participant pushes mallory's task",
        lambda: described(
            eve.push(
                participant_pb2.PushResultRequest(
                    participant_id=EVE,
                    task_id=tid,
                    error=participant_pb2.TaskError(message="x"),
                )
            )
        ),
        PRECONDITION,
        f"participant {EVE!r} is not registered",
    )
    attack.check(
        "unregistered participant downloads a model",
        lambda: described(eve.download(model_blob)),
        PRECONDITION,
        "register before downloading",
    )
    attack.check(
        "unregistered participant uploads",
        lambda: described(eve.upload(chunked(b"eve", sha256(b"eve"), job, 1))),
        PRECONDITION,
        "register before uploading",
    )

    message_cases(attack, task)
    register_cases(attack)
    download_cases(attack, task)
    upload_cases(attack, task)
    result_cases(attack, task)


def credential_cases(attack: Attack, task: participant_pb2.Task) -> None:
    m = attack.mallory
    pull_as = participant_pb2.PullTaskRequest(participant_id="p0", wait_s=0)
    as_p0 = "authenticated as 'mallory'; the request names participant 'p0'"
    attack.check(
        "no credentials",
        lambda: described(m.pull(0.0, md=())),
        UNAUTHENTICATED,
        "this coordinator requires a client certificate or a bearer token",
    )
    attack.check(
        "unknown bearer token",
        lambda: described(m.pull(0.0, md=bearer("not-a-token-of-this-federation"))),
        UNAUTHENTICATED,
        "unknown bearer token",
    )
    attack.check(
        "authorization that is not a bearer token",
        lambda: described(m.pull(0.0, md=(("authorization", "Basic bWFsbG9yeTpwdw=="),))),
        UNAUTHENTICATED,
        "authorization metadata must be 'Bearer <token>'",
    )
    attack.check(
        "mallory's token pulls p0's tasks",
        lambda: described(m.stub.PullTask(pull_as, metadata=m.md, timeout=10)),
        DENIED,
        as_p0,
    )
    attack.check(
        "mallory's token registers as p0",
        lambda: described(m.register(SUMMARY, participant_id="p0")),
        DENIED,
        as_p0,
    )
    attack.check(
        "mallory's token heartbeats for p1",
        lambda: described(
            m.stub.Heartbeat(
                participant_pb2.HeartbeatRequest(participant_id="p1"), metadata=m.md, timeout=10
            )
        ),
        DENIED,
        "authenticated as 'mallory'; the request names participant 'p1'",
    )
    attack.check(
        "mallory's token with p0 in the participant metadata",
        lambda: described(m.pull(0.0, md=(*m.md, (MD_PARTICIPANT, "p0")))),
        DENIED,
        "authenticated as 'mallory' but the call claims to be 'p0'",
    )
    attack.check(
        "mallory's task pushed under p0's id",
        lambda: described(
            m.push(
                participant_pb2.PushResultRequest(
                    participant_id="p0",
                    task_id=task.task_id,
                    error=participant_pb2.TaskError(message="p0 gives up"),
                )
            )
        ),
        DENIED,
        as_p0,
    )
    attack.check(
        "operator token on the participant service",
        lambda: described(m.pull(0.0, md=attack.operator_md)),
        DENIED,
        "this call needs a participant credential; the caller is operator 'admin'",
    )
    as_operator = control_pb2_grpc.ControlServiceStub(m.channel)
    attack.check(
        "participant token on the control service",
        lambda: described(
            as_operator.StartTraining(
                control_pb2.StartTrainingRequest(spec=training_spec_to_proto(TRAINING)),
                metadata=m.md,
                timeout=10,
            )
        ),
        DENIED,
        "the caller is participant 'mallory'",
    )


def message_cases(attack: Attack, task: participant_pb2.Task) -> None:
    m = attack.mallory
    pull = participant_pb2.PullTaskRequest(participant_id=MALLORY, wait_s=0)
    attack.check(
        "unknown field in a request",
        lambda: described(m.raw_unary("PullTask", with_unknown_field(pull.SerializeToString()))),
        INVALID,
        "PullTaskRequest has unexpected field(s) 99: this coordinator speaks fused.v1",
    )
    small = participant_pb2.DataSummary(dataset="digits", class_counts=[10])
    summary = with_unknown_field(small.SerializeToString(), 97)
    register = participant_pb2.RegisterRequest(
        protocol_version=PROTOCOL_VERSION, participant_id=MALLORY
    ).SerializeToString()
    register += b"\x12" + bytes([len(summary)]) + summary  # field 2 (data), length-delimited
    assert len(summary) < 128
    attack.check(
        "unknown field nested in a request",
        lambda: described(m.raw_unary("Register", register)),
        INVALID,
        "RegisterRequest has unexpected field(s) 97",
    )
    train = participant_pb2.TrainResult(update_blob_id=attack.foreign_upload, num_examples=5)
    nested = with_unknown_field(train.SerializeToString(), 12)
    push = participant_pb2.PushResultRequest(participant_id=MALLORY, task_id=task.task_id)
    push_bytes = push.SerializeToString() + b"\x1a" + bytes([len(nested)]) + nested
    assert len(nested) < 128
    attack.check(
        "unknown field nested in a result",
        lambda: described(m.raw_unary("PushResult", push_bytes)),
        INVALID,
        "PushResultRequest has unexpected field(s) 12",
    )
    chunk = chunked(b"abc", sha256(b"abc"), task.job_id, task.round)[0]
    attack.check(
        "unknown field in an upload chunk",
        lambda: described(m.raw_upload([with_unknown_field(chunk.SerializeToString(), 40)])),
        INVALID,
        "upload rejected: BlobChunk has unexpected field(s) 40",
    )
    attack.check(
        "upload chunk that is not a protobuf message",
        lambda: described(m.raw_upload([b"\xff\xff\xff\xff"])),
        INVALID,
        "upload rejected: a chunk is not a valid fused.v1.BlobChunk message",
    )
    attack.check(
        "request above the 4 MiB message limit",
        lambda: described(
            m.stub.Register(
                participant_pb2.RegisterRequest(
                    protocol_version=PROTOCOL_VERSION,
                    participant_id=MALLORY,
                    data=SUMMARY,
                    agent_version="x" * (5 << 20),
                ),
                metadata=m.md,
                timeout=30,
            )
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max",
    )
    big = bytes(5 << 20)
    attack.check(
        "upload chunk above the 4 MiB message limit",
        lambda: described(m.upload(chunked(big, sha256(big), task.job_id, 1, len(big)))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max",
    )


def register_cases(attack: Attack) -> None:
    m = attack.mallory
    attack.check(
        "registration with a path as participant id",
        lambda: described(m.register(SUMMARY, participant_id="../../state")),
        INVALID,
        "bad participant id '../../state'",
    )
    for what, change, message in (
        ("whose class counts do not sum to num_train", {"num_train": 99}, "sum to num_train"),
        ("naming no workload", {"workload": ""}, "name the workload served"),
        (
            "with a forged schema digest",
            {"schema_digest": "0" * 64},
            "schema_digest is not the sha256 of tensor_schema",
        ),
        (
            "with a schema that is not JSON",
            {"tensor_schema": b"[{"},
            "tensor schema is not a list of tensor entries",
        ),
    ):
        lying = participant_pb2.DataSummary()
        lying.CopyFrom(SUMMARY)
        for name, value in change.items():
            setattr(lying, name, value)
        attack.check(f"registration {what}", partial(registered, m, lying), INVALID, message)
    huge = participant_pb2.DataSummary(
        dataset="digits", class_counts=[1] * 10_001, num_train=10_001
    )
    attack.check(
        "registration with 10001 classes",
        lambda: described(m.register(huge)),
        INVALID,
        "DataSummary.class_counts has 10001 entries; the limit is 10000",  # coordinator/limits.py
    )


def registered(m: Client, summary: participant_pb2.DataSummary) -> str:
    return described(m.register(summary))


def download_cases(attack: Attack, task: participant_pb2.Task) -> None:
    m = attack.mallory
    not_granted = f"is not named by an open task of {MALLORY}"
    attack.check(
        "download of a path instead of a digest",
        lambda: described(m.download("../../state.db")),
        INVALID,
        "blob_id must be a sha256 hex digest",
    )
    attack.check(
        "download of a model no task of hers names",
        lambda: described(m.download(attack.foreign_model)),
        DENIED,
        f"blob {attack.foreign_model} {not_granted}",
    )
    attack.check(
        "download of another participant's upload",
        lambda: described(m.download(attack.foreign_upload)),
        DENIED,
        f"blob {attack.foreign_upload} {not_granted}",
    )
    nothing = sha256(b"no such artifact")
    attack.check(
        "download of a digest nothing has (no existence oracle)",
        lambda: described(m.download(nothing)),
        DENIED,
        f"blob {nothing} {not_granted}",
    )
    attack.check(
        "download from an offset past the end",
        lambda: described(m.download(task.model_blob_id, offset=1 << 30)),
        grpc.StatusCode.OUT_OF_RANGE,
        "offset beyond size",
    )
