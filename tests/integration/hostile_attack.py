"""Mallory of the hostile corpus: who she is, the attacks that fail her tasks, and how she
answers each task as it arrives (the cases that leave a task open are in hostile_cases)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import grpc

from fused.common.codecs.tensor_codec import decode_tensors
from fused.common.ml.models import init_model
from fused.common.ml.workloads import workload_for
from fused.common.rpc.identity import read_token_file
from fused.common.rpc.task_convert import adapter_from_proto
from fused.participant.executor import adapter_layout
from fused.proto.v1 import control_pb2, participant_pb2
from fused.tools.launch import LocalFederation
from tests.integration.hostile import (
    Case,
    Client,
    Outcome,
    attempt,
    bad_adapters,
    bad_updates,
    bearer,
    described,
    serve_job,
    sha256,
)
from tests.integration.hostile_cases import open_task_cases
from tests.integration.hostile_names import (
    ADAPTER_ATTACKS,
    ADAPTER_KIND,
    EVAL_ATTACKS,
    EVAL_KIND,
    EVE,
    INVALID,
    MALLORY,
    MAX_UPLOAD,
    NOT_OPEN,
    OK,
    SENSITIVITY_KIND,
    TRAIN_ATTACKS,
    TRAIN_KIND,
)

TERMINAL = {"completed", "failed"}


@dataclasses.dataclass
class Hostile:
    fed: LocalFederation
    pki: Path

    def token(self, role: str, name: str) -> str:
        return read_token_file(self.pki / f"{role}-{name}.token")


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
        """Answer every task of the job until it ends; the job must complete."""
        info: control_pb2.JobInfo = serve_job(
            self.mallory, self.control, job_id, self.on_task, timeout_s
        )
        assert info.status == "completed", info.reason
        return info

    def on_task(self, task: participant_pb2.Task) -> None:
        if task.kind == TRAIN_KIND:
            if task.round == 1:
                open_task_cases(self, task)
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
        if task.forget_only:  # the training recorded the rest: only forget distances are asked
            sens = participant_pb2.SensitivityResult(forget_distances=distances, forget_examples=5)
            detail = "forget distances must be finite and non-negative"
        else:
            sens = participant_pb2.SensitivityResult(distances=distances, num_examples=50)
            detail = "sensitivity distances must be finite and non-negative"
        request = participant_pb2.PushResultRequest(
            participant_id=MALLORY, task_id=task.task_id, sensitivity=sens
        )
        self.check(
            "sensitivity report with a NaN distance",
            lambda: described(self.mallory.push(request)),
            INVALID,
            detail,
        )
        self.expected_failures[(task.job_id, task.phase, task.round)] = detail

    def adapter_attack(self, task: participant_pb2.Task) -> None:
        name, detail = self.adapter_attacks.pop(0)
        layout = adapter_layout(
            workload_for(task.model_name, task.num_classes), adapter_from_proto(task.adapter)
        )
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
