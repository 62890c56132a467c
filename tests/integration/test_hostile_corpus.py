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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.launch import LocalFederation
from common.models import init_model
from common.pki import init_pki, read_token_file
from common.serde import adapter_from_proto, training_spec_to_proto, unlearning_spec_to_proto
from common.specs import TrainingSpec, UnlearningSpec
from common.tasks import ForgetSpec
from common.tensor_codec import decode_tensors
from common.train_config import TrainConfig
from common.wire import MD_PARTICIPANT
from participant.executor import adapter_layout
from proto.fused.v1 import common_pb2, control_pb2, control_pb2_grpc, participant_pb2
from tests.integration.hostile import (
    Case,
    Client,
    Outcome,
    attempt,
    bad_adapters,
    bad_updates,
    bearer,
    chunked,
    described,
    sha256,
    with_unknown_field,
)

HONEST = ("p0", "p1")
MALLORY = "mallory"
EVE = "eve"  # holds a valid token but never registers
MAX_UPLOAD = 1 << 20  # --max-upload-mb 1
MIN_CASES = 30
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OK = grpc.StatusCode.OK
TRAIN_KIND = participant_pb2.TASK_KIND_TRAIN
EVAL_KIND = participant_pb2.TASK_KIND_EVALUATE
SENSITIVITY_KIND = participant_pb2.TASK_KIND_SENSITIVITY
ADAPTER_KIND = participant_pb2.TASK_KIND_ADAPTER_TRAIN
SUMMARY = participant_pb2.DataSummary(
    dataset="digits", class_counts=[10] * 10, num_train=100, num_test=20
)
TRAIN = TrainConfig(local_epochs=1, lr=0.05, batch_size=32)
NOT_OPEN = "accepted=False task"

# What each task mallory gets is answered with, and the message that must come back.
# Training tasks: (attack, expected detail); "push:" attacks push a crafted result, the others
# upload the bad_updates() payload of that name and push a result naming it.
TRAIN_ATTACKS = [
    ("push:foreign_upload", f"{MALLORY} has not uploaded"),
    ("push:zero_examples", "num_examples 0 is not within the 100 training samples"),
    ("push:too_many_examples", "num_examples 1000000 is not within the 100 training samples"),
    ("push:eval_for_train", "expected a training result"),
    ("valid:nan_loss", "mean_loss nan is not a finite, non-negative number"),
    ("valid:inf_seconds", "seconds inf is not a finite, non-negative number"),
    ("nan", "1 of 8192 values are not finite (NaN or Inf)"),
    ("inf", "1 of 128 values are not finite (NaN or Inf)"),
    ("shape", "expected shape [128, 64], got [64, 128]"),
    ("dtype", "expected dtype float32, got float64"),
    ("missing", "missing ['net.0.bias']"),
    ("extra", "unexpected ['backdoor.weight']"),
    ("duplicate", "header has duplicate key 'net.0.bias'"),
    ("header_size", "header length 2097152 exceeds the limit of 1048576"),
    ("truncated", "payload is truncated: 7 bytes, need at least 8"),
    ("cut", "out of range for a data buffer"),
    ("trailing", "but the data buffer holds"),
    ("unknown_dtype", "unknown dtype 'F8_E4M3'"),
    ("size_lie", "shape [1] of F32 needs 4 bytes"),
    ("not_json", "header is not valid JSON"),
]
EVAL_ATTACKS = [
    ("wrong class count", [1, 1, 1], [5, 5, 5], 0, 0, "evaluation counts have 3 classes"),
    ("more correct than total", [6] + [0] * 9, [5] * 10, 0, 0, "correct exceeds total"),
    ("forget_correct > forget_total", [0] * 10, [5] * 10, 3, 2, "forget_correct exceeds"),
]
ADAPTER_ATTACKS = [
    ("bomb", "declares 67108864 decompressed bytes"),
    ("no_content_size", "does not declare its content size"),
    ("oversized", "bytes compressed, more than the limit"),
    ("not_zstd", "adapter payload is not a zstd frame"),
    ("two_frames", "could not be decompressed"),
    ("mask", "adapter was built for a different mask"),
    ("nan", "values are not finite (NaN or Inf)"),
    ("count", "values (one per masked position)"),
    ("dtype", "is not the job's value dtype"),
]
TRAINING = TrainingSpec(
    rounds=len(TRAIN_ATTACKS),
    train=TRAIN,
    min_participants=len(HONEST),
    round_deadline_s=60,
    wait_for_participants_s=30,
    seed=7,
    evaluate_each_round=False,
)
UNLEARNING = UnlearningSpec(
    forget=ForgetSpec("class", class_label=3),
    method="fused",
    rounds=len(ADAPTER_ATTACKS),
    train=TRAIN,
    top_k=2,
    density=0.1,
    min_participants=len(HONEST),
    round_deadline_s=60,
    wait_for_participants_s=30,
    seed=11,
    evaluate_each_round=False,
)
TERMINAL = {"completed", "failed"}


@dataclasses.dataclass
class Hostile:
    fed: LocalFederation
    pki: Path

    def token(self, role: str, name: str) -> str:
        return read_token_file(self.pki / f"{role}-{name}.token")


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
    spec = training_spec_to_proto(TRAINING)
    job: control_pb2.JobInfo = control.StartTraining(control_pb2.StartTrainingRequest(spec=spec))
    return job.job_id


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


# --------------------------------------------------------------------------- mallory


class Attack:
    """Runs the corpus as mallory's tasks arrive and records every answer."""

    def __init__(self, hostile: Hostile, foreign_upload: str, foreign_model: str) -> None:
        self.fed = hostile.fed
        self.control = hostile.fed.control()
        address = hostile.fed.address
        self.mallory = Client(address, MALLORY, hostile.token("participant", MALLORY))
        self.eve = Client(address, EVE, hostile.token("participant", EVE))
        self.operator_md = bearer(hostile.token("operator", "admin"))
        self.foreign_upload = foreign_upload  # an honest participant's update, from the store
        self.foreign_model = foreign_model  # an aggregate no task of mallory's names
        self.outcomes: list[Outcome] = []
        self.last_train_task: participant_pb2.Task | None = None
        self.train_attacks = list(TRAIN_ATTACKS)
        self.eval_attacks = list(EVAL_ATTACKS)
        self.adapter_attacks = list(ADAPTER_ATTACKS)
        self.sensitivity_done = False
        self.expected_failures: dict[tuple[str, str, int], str] = {}  # (job, phase, round)
        self.declined = 0

    def close(self) -> None:
        self.mallory.close()
        self.eve.close()

    def check(self, name: str, call: Callable[[], str], code: grpc.StatusCode, detail: str) -> None:
        case = Case(name, call, code, detail)
        status, details = attempt(call)
        self.outcomes.append(Outcome(case, status, details))
        assert self.fed.coordinator is not None and self.fed.coordinator.poll() is None, name
        assert self.mallory.serving(), f"coordinator not serving after {name!r}"

    def serve(self, job_id: str, timeout_s: float = 180) -> control_pb2.JobInfo:
        """Answer every task of the job until it ends."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = self.mallory.pull(wait_s=1.0)
            if task is not None:
                assert task.job_id == job_id, task
                self.on_task(task)
                continue
            info: control_pb2.JobInfo = self.control.GetJob(
                control_pb2.GetJobRequest(job_id=job_id)
            )
            if info.status in TERMINAL:
                assert info.status == "completed", info.reason
                return info
        raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")

    def on_task(self, task: participant_pb2.Task) -> None:
        if task.kind == TRAIN_KIND:
            if task.round == 1:
                self.open_task_cases(task)
            if task.round == 2 and self.last_train_task is not None:
                stale = self.last_train_task.task_id
                self.check(
                    "stale result for the previous round",
                    lambda: described(self.mallory.push_train(stale, self.foreign_upload)),
                    OK,
                    f"{NOT_OPEN} {stale} is not open",
                )
            self.train_attack(task)
            if task.round == 1:
                self.check(
                    "replay of a result already answered",
                    lambda: described(self.mallory.push_train(task.task_id, self.foreign_upload)),
                    OK,
                    f"{NOT_OPEN} {task.task_id} is not open",
                )
            self.last_train_task = task
        elif task.kind == EVAL_KIND and self.eval_attacks:
            self.eval_attack(task)
        elif task.kind == SENSITIVITY_KIND and not self.sensitivity_done:
            self.sensitivity_attack(task)
        elif task.kind == ADAPTER_KIND and self.adapter_attacks:
            self.adapter_attack(task)
        else:
            self.declined += 1
            error = participant_pb2.TaskError(message="mallory declines")
            reply = self.mallory.push(
                participant_pb2.PushResultRequest(
                    participant_id=MALLORY, task_id=task.task_id, error=error
                )
            )
            assert reply.accepted, reply

    # ---------------------------------------------------------------- failing attacks

    def train_attack(self, task: participant_pb2.Task) -> None:
        name, detail = self.train_attacks.pop(0)
        m = self.mallory
        tid = task.task_id
        call: Callable[[], str]
        if name == "push:foreign_upload":
            call = lambda: described(m.push_train(tid, self.foreign_upload))  # noqa: E731
        elif name == "push:zero_examples":
            call = lambda: described(m.push_train(tid, self.foreign_upload, 0))  # noqa: E731
        elif name == "push:too_many_examples":
            call = lambda: described(m.push_train(tid, self.foreign_upload, 10**6))  # noqa: E731
        elif name == "push:eval_for_train":
            ev = participant_pb2.EvalResult(correct=[1] * 10, total=[2] * 10)
            request = participant_pb2.PushResultRequest(
                participant_id=MALLORY, task_id=tid, eval=ev
            )
            call = lambda: described(m.push(request))  # noqa: E731
        elif name.startswith("valid:"):  # a well-formed update (the model she was sent)
            blob = m.upload_bytes(self.model_bytes(task), task.job_id, task.round)
            nan_loss, inf_seconds = name == "valid:nan_loss", name == "valid:inf_seconds"
            call = lambda: described(  # noqa: E731
                m.push_train(
                    tid,
                    blob,
                    mean_loss=float("nan") if nan_loss else 0.5,
                    seconds=float("inf") if inf_seconds else 0.1,
                )
            )
        else:
            weights, _ = decode_tensors(self.model_bytes(task))
            payload = bad_updates(weights, task.model_name)[name]
            blob = m.upload_bytes(payload, task.job_id, task.round)
            call = lambda: described(m.push_train(tid, blob))  # noqa: E731
        self.check(f"training update: {name}", call, INVALID, detail)
        self.expected_failures[(task.job_id, task.phase, task.round)] = detail

    def eval_attack(self, task: participant_pb2.Task) -> None:
        name, correct, total, forget_correct, forget_total, detail = self.eval_attacks.pop(0)
        ev = participant_pb2.EvalResult(
            correct=correct,
            total=total,
            loss_sum=1.0,
            forget_correct=forget_correct,
            forget_total=forget_total,
        )
        request = participant_pb2.PushResultRequest(
            participant_id=MALLORY, task_id=task.task_id, eval=ev
        )
        self.check(
            f"evaluation report: {name}",
            lambda: described(self.mallory.push(request)),
            INVALID,
            detail,
        )
        self.expected_failures[(task.job_id, task.phase, task.round)] = detail

    def sensitivity_attack(self, task: participant_pb2.Task) -> None:
        self.sensitivity_done = True
        names = [n for n, _ in init_model(task.model_name, task.num_classes, 0).named_parameters()]
        distances = {n: 0.0 for n in names} | {names[0]: float("nan")}
        sens = participant_pb2.SensitivityResult(distances=distances, num_examples=50)
        request = participant_pb2.PushResultRequest(
            participant_id=MALLORY, task_id=task.task_id, sensitivity=sens
        )
        detail = "sensitivity distances must be finite and non-negative"
        self.check(
            "sensitivity report with a NaN distance",
            lambda: described(self.mallory.push(request)),
            INVALID,
            detail,
        )
        self.expected_failures[(task.job_id, task.phase, task.round)] = detail

    def adapter_attack(self, task: participant_pb2.Task) -> None:
        name, detail = self.adapter_attacks.pop(0)
        layout = adapter_layout(task.model_name, task.num_classes, adapter_from_proto(task.adapter))
        payload = bad_adapters(layout)[name]
        assert len(payload) < MAX_UPLOAD
        blob = self.mallory.upload_bytes(payload, task.job_id, task.round)
        self.check(
            f"adapter upload: {name}",
            lambda: described(self.mallory.push_train(task.task_id, blob)),
            INVALID,
            detail,
        )
        self.expected_failures[(task.job_id, task.phase, task.round)] = detail

    def model_bytes(self, task: participant_pb2.Task) -> bytes:
        data = self.mallory.download(task.model_blob_id)  # granted: her own task names it
        assert sha256(data) == task.model_blob_id
        return data

    # ---------------------------------------------------------------- the task stays open

    def open_task_cases(self, task: participant_pb2.Task) -> None:
        """Requests that must be refused without touching mallory's open task."""
        eve = self.eve
        job, tid, model_blob = task.job_id, task.task_id, task.model_blob_id
        self.credential_cases(task)

        # a participant that never registered
        self.check(
            "unregistered participant pulls a task",
            lambda: described(eve.pull(0.0)),
            PRECONDITION,
            f"participant {EVE!r} is not registered; call Register first",
        )
        self.check(
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
        self.check(
            "unregistered participant downloads a model",
            lambda: described(eve.download(model_blob)),
            PRECONDITION,
            "register before downloading",
        )
        self.check(
            "unregistered participant uploads",
            lambda: described(eve.upload(chunked(b"eve", sha256(b"eve"), job, 1))),
            PRECONDITION,
            "register before uploading",
        )

        self.message_cases(task)
        self.register_cases()
        self.download_cases(task)
        self.upload_cases(task)
        self.result_cases(task)

    def credential_cases(self, task: participant_pb2.Task) -> None:
        m = self.mallory
        pull_as = participant_pb2.PullTaskRequest(participant_id="p0", wait_s=0)
        as_p0 = "authenticated as 'mallory'; the request names participant 'p0'"
        self.check(
            "no credentials",
            lambda: described(m.pull(0.0, md=())),
            UNAUTHENTICATED,
            "this coordinator requires a client certificate or a bearer token",
        )
        self.check(
            "unknown bearer token",
            lambda: described(m.pull(0.0, md=bearer("not-a-token-of-this-federation"))),
            UNAUTHENTICATED,
            "unknown bearer token",
        )
        self.check(
            "authorization that is not a bearer token",
            lambda: described(m.pull(0.0, md=(("authorization", "Basic bWFsbG9yeTpwdw=="),))),
            UNAUTHENTICATED,
            "authorization metadata must be 'Bearer <token>'",
        )
        self.check(
            "mallory's token pulls p0's tasks",
            lambda: described(m.stub.PullTask(pull_as, metadata=m.md, timeout=10)),
            DENIED,
            as_p0,
        )
        self.check(
            "mallory's token registers as p0",
            lambda: described(m.register(SUMMARY, participant_id="p0")),
            DENIED,
            as_p0,
        )
        self.check(
            "mallory's token heartbeats for p1",
            lambda: described(
                m.stub.Heartbeat(
                    participant_pb2.HeartbeatRequest(participant_id="p1"), metadata=m.md, timeout=10
                )
            ),
            DENIED,
            "authenticated as 'mallory'; the request names participant 'p1'",
        )
        self.check(
            "mallory's token with p0 in the participant metadata",
            lambda: described(m.pull(0.0, md=(*m.md, (MD_PARTICIPANT, "p0")))),
            DENIED,
            "authenticated as 'mallory' but the call claims to be 'p0'",
        )
        self.check(
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
        self.check(
            "operator token on the participant service",
            lambda: described(m.pull(0.0, md=self.operator_md)),
            DENIED,
            "this call needs a participant credential; the caller is operator 'admin'",
        )
        as_operator = control_pb2_grpc.ControlServiceStub(m.channel)
        self.check(
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

    def message_cases(self, task: participant_pb2.Task) -> None:
        m = self.mallory
        pull = participant_pb2.PullTaskRequest(participant_id=MALLORY, wait_s=0)
        self.check(
            "unknown field in a request",
            lambda: described(
                m.raw_unary("PullTask", with_unknown_field(pull.SerializeToString()))
            ),
            INVALID,
            "PullTaskRequest has unexpected field(s) 99: this coordinator speaks fused.v1",
        )
        summary = with_unknown_field(SUMMARY.SerializeToString(), 7)
        register = participant_pb2.RegisterRequest(participant_id=MALLORY).SerializeToString()
        register += b"\x12" + bytes([len(summary)]) + summary  # field 2 (data), length-delimited
        assert len(summary) < 128
        self.check(
            "unknown field nested in a request",
            lambda: described(m.raw_unary("Register", register)),
            INVALID,
            "RegisterRequest has unexpected field(s) 7",
        )
        train = participant_pb2.TrainResult(update_blob_id=self.foreign_upload, num_examples=5)
        nested = with_unknown_field(train.SerializeToString(), 12)
        push = participant_pb2.PushResultRequest(participant_id=MALLORY, task_id=task.task_id)
        push_bytes = push.SerializeToString() + b"\x1a" + bytes([len(nested)]) + nested
        assert len(nested) < 128
        self.check(
            "unknown field nested in a result",
            lambda: described(m.raw_unary("PushResult", push_bytes)),
            INVALID,
            "PushResultRequest has unexpected field(s) 12",
        )
        chunk = chunked(b"abc", sha256(b"abc"), task.job_id, task.round)[0]
        self.check(
            "unknown field in an upload chunk",
            lambda: described(m.raw_upload([with_unknown_field(chunk.SerializeToString(), 40)])),
            INVALID,
            "upload rejected: BlobChunk has unexpected field(s) 40",
        )
        self.check(
            "upload chunk that is not a protobuf message",
            lambda: described(m.raw_upload([b"\xff\xff\xff\xff"])),
            INVALID,
            "upload rejected: a chunk is not a valid fused.v1.BlobChunk message",
        )
        self.check(
            "request above the 4 MiB message limit",
            lambda: described(
                m.stub.Register(
                    participant_pb2.RegisterRequest(
                        participant_id=MALLORY, data=SUMMARY, agent_version="x" * (5 << 20)
                    ),
                    metadata=m.md,
                    timeout=30,
                )
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Received message larger than max",
        )
        big = bytes(5 << 20)
        self.check(
            "upload chunk above the 4 MiB message limit",
            lambda: described(m.upload(chunked(big, sha256(big), task.job_id, 1, len(big)))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Received message larger than max",
        )

    def register_cases(self) -> None:
        m = self.mallory
        self.check(
            "registration with a path as participant id",
            lambda: described(m.register(SUMMARY, participant_id="../../state")),
            INVALID,
            "bad participant id '../../state'",
        )
        lying = participant_pb2.DataSummary(dataset="digits", class_counts=[10] * 10, num_train=99)
        self.check(
            "registration whose class counts do not sum to num_train",
            lambda: described(m.register(lying)),
            INVALID,
            "class_counts must be non-empty and sum to num_train",
        )
        huge = participant_pb2.DataSummary(
            dataset="digits", class_counts=[1] * 10_001, num_train=10_001
        )
        self.check(
            "registration with 10001 classes",
            lambda: described(m.register(huge)),
            INVALID,
            "class_counts must be non-empty and sum to num_train",
        )

    def download_cases(self, task: participant_pb2.Task) -> None:
        m = self.mallory
        not_granted = f"is not named by an open task of {MALLORY}"
        self.check(
            "download of a path instead of a digest",
            lambda: described(m.download("../../state.db")),
            INVALID,
            "blob_id must be a sha256 hex digest",
        )
        self.check(
            "download of a model no task of hers names",
            lambda: described(m.download(self.foreign_model)),
            DENIED,
            f"blob {self.foreign_model} {not_granted}",
        )
        self.check(
            "download of another participant's upload",
            lambda: described(m.download(self.foreign_upload)),
            DENIED,
            f"blob {self.foreign_upload} {not_granted}",
        )
        nothing = sha256(b"no such artifact")
        self.check(
            "download of a digest nothing has (no existence oracle)",
            lambda: described(m.download(nothing)),
            DENIED,
            f"blob {nothing} {not_granted}",
        )
        self.check(
            "download from an offset past the end",
            lambda: described(m.download(task.model_blob_id, offset=1 << 30)),
            grpc.StatusCode.OUT_OF_RANGE,
            "offset beyond size",
        )

    def upload_cases(self, task: participant_pb2.Task) -> None:
        m = self.mallory
        job, r = task.job_id, task.round

        def data(tag: str, n: int = 1000) -> bytes:
            return (tag.encode() * n)[:n]

        def chunk(payload: bytes, offset: int, **fields: Any) -> common_pb2.BlobChunk:
            base: dict[str, Any] = {
                "blob_id": sha256(payload),
                "offset": offset,
                "data": payload[offset : offset + 100],
                "total_size": len(payload),
                "job_id": job,
                "round": r,
            }
            return common_pb2.BlobChunk(**(base | fields))

        def upload(*chunks: common_pb2.BlobChunk) -> Callable[[], str]:
            return lambda: described(m.upload(chunks))

        rejected = "upload rejected: "
        self.check("empty upload stream", upload(), INVALID, rejected + "empty upload")
        a = data("a")
        self.check(
            "first chunk without a digest",
            upload(chunk(a, 0, blob_id="")),
            INVALID,
            "the first chunk must name the blob's sha256 digest",
        )
        self.check(
            "declared total_size above the upload limit",
            upload(chunk(a, 0, total_size=2 * MAX_UPLOAD)),
            INVALID,
            f"upload of {2 * MAX_UPLOAD} bytes exceeds the limit of {MAX_UPLOAD}",
        )
        b = data("b")
        self.check(
            "more bytes than the declared total_size",
            upload(chunk(b, 0, total_size=50)),
            INVALID,
            "upload exceeds its declared size of 50 bytes",
        )
        c = data("c")
        self.check(
            "chunk offsets going backwards",
            upload(chunk(c, 0), chunk(c, 0)),
            INVALID,
            "chunk at offset 0, expected 100",
        )
        d = data("d")
        self.check(
            "chunk offsets with a gap",
            upload(chunk(d, 0), chunk(d, 200)),
            INVALID,
            "chunk at offset 200, expected 100",
        )
        e = data("e")
        self.check(
            "first chunk not at the start",
            upload(chunk(e, 300)),
            INVALID,
            "upload starts at offset 300; resume at offset 0",
        )
        f = data("f", 100)
        self.check(
            "content not matching the declared digest",
            upload(chunk(f, 0, blob_id=sha256(b"something else"))),
            INVALID,
            f"not the declared {sha256(b'something else')}",
        )
        g = data("g", 100)
        self.check(
            "upload for an unknown job",
            upload(chunk(g, 0, job_id="job-does-not-exist")),
            INVALID,
            "upload names unknown job 'job-does-not-exist'",
        )
        self.check(
            "upload for a round the job has not reached",
            upload(chunk(g, 0, round=99)),
            INVALID,
            f"upload names round 99 of job {job!r}, which has not reached it",
        )
        h = data("h")
        self.check(
            "stream that ends before total_size",
            upload(chunk(h, 0), chunk(h, 100), chunk(h, 200), chunk(h, 300)),
            INVALID,
            "stream ended after 400 of 1000 bytes; resume at offset 400",
        )
        self.check(
            "restart from 0 after a broken stream",
            upload(chunk(h, 0)),
            INVALID,
            "upload starts at offset 0; resume at offset 400",
        )
        foreign_size = len(
            (self.fed.work_dir / "state" / "artifacts" / "sha256")
            .joinpath(self.foreign_upload[:2], self.foreign_upload)
            .read_bytes()
        )
        self.check(
            "claiming another participant's upload by its digest",
            upload(
                common_pb2.BlobChunk(
                    blob_id=self.foreign_upload, total_size=foreign_size, job_id=job, round=r
                )
            ),
            INVALID,
            f"stream ended after 0 of {foreign_size} bytes",
        )
        self.check(
            "upload status of another participant's upload",
            lambda: described(m.upload_status(self.foreign_upload)),
            OK,
            "complete=False offset=0",
        )
        self.check(
            "upload status of a path",
            lambda: described(m.upload_status("../uploads")),
            INVALID,
            "blob_id must be a sha256 hex digest",
        )

    def result_cases(self, task: participant_pb2.Task) -> None:
        m = self.mallory
        self.check(
            "result for an unknown task",
            lambda: described(m.push_train("task-0000000000", self.foreign_upload)),
            OK,
            f"{NOT_OPEN} task-0000000000 is not open (unknown or past deadline)",
        )
        self.check(
            "result without an outcome",
            lambda: described(
                m.push(
                    participant_pb2.PushResultRequest(participant_id=MALLORY, task_id=task.task_id)
                )
            ),
            INVALID,
            "result rejected: result has no outcome",
        )
        ragged = participant_pb2.EvalResult(correct=[1, 2], total=[3] * 10)
        self.check(
            "evaluation counts of unequal length",
            lambda: described(
                m.push(
                    participant_pb2.PushResultRequest(
                        participant_id=MALLORY, task_id=task.task_id, eval=ragged
                    )
                )
            ),
            INVALID,
            "correct and total must have one entry per class",
        )


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
