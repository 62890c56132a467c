"""Mallory the poisoner: a registered participant with a valid token, speaking raw gRPC, who
answers each task of a training job with one plausibility attack (a finite but huge update,
an inflated sample count, inflated evaluation counts) and records what the coordinator said."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.participant.site import builtin_summary
from fused.proto.v1 import control_pb2, control_pb2_grpc, participant_pb2
from tests.integration.hostile import Client, attempt, described, serve_job, sha256
from tests.integration.hostile_names import EVAL_KIND, TRAIN_KIND

MALLORY = "mallory"
CLAIMED = 1_000_000  # what she registers as her training and test set sizes
SUMMARY = builtin_summary("mlp", [CLAIMED // 10] * 10, CLAIMED, "digits")
HUGE = 3e38  # finite in float32


@dataclass(frozen=True)
class Answer:
    attack: str
    code: grpc.StatusCode
    details: str


class Poisoner:
    def __init__(self, client: Client, control: control_pb2_grpc.ControlServiceStub) -> None:
        self.client = client
        self.control = control
        self.answers: dict[str, Answer] = {}

    def record(self, attack: str, call: object) -> None:
        code, details = attempt(call)  # type: ignore[arg-type]
        self.answers[attack] = Answer(attack, code, details)

    def serve(self, job_id: str, timeout_s: float = 180) -> control_pb2.JobInfo:
        """Answer every task of the job until it ends; returns the job."""
        info: control_pb2.JobInfo = serve_job(
            self.client, self.control, job_id, self.on_task, timeout_s
        )
        return info

    def on_task(self, task: participant_pb2.Task) -> None:
        if task.kind == TRAIN_KIND and task.round == 1:
            self.huge_update(task)
        elif task.kind == TRAIN_KIND and task.round == 2:
            self.record("remove while her task is open", lambda: self.remove_self())
            self.inflated_examples(task)
        elif task.kind == EVAL_KIND and task.round == 1:
            self.eval_counts(task, "evaluation counts above registration", 2 * CLAIMED // 10)
        elif task.kind == EVAL_KIND and task.round == 2:
            self.eval_counts(task, "inflated evaluation counts", CLAIMED // 10)
        else:
            error = participant_pb2.TaskError(message="mallory declines")
            self.client.push(
                participant_pb2.PushResultRequest(
                    participant_id=MALLORY, task_id=task.task_id, error=error
                )
            )

    def remove_self(self) -> str:
        request = control_pb2.ParticipantRequest(participant_id=MALLORY)
        return str(self.control.RemoveParticipant(request, timeout=10))

    def model(self, task: participant_pb2.Task) -> dict[str, torch.Tensor]:
        data = self.client.download(task.model_blob_id)  # her own task names it
        assert sha256(data) == task.model_blob_id
        return decode_tensors(data)[0]

    def push_weights(
        self, task: participant_pb2.Task, weights: dict[str, torch.Tensor], n: int
    ) -> str:
        data = encode_tensors(weights, {"model": task.model_name})
        blob = self.client.upload_bytes(data, task.job_id, task.round)
        return described(self.client.push_train(task.task_id, blob, num_examples=n))

    def huge_update(self, task: participant_pb2.Task) -> None:
        """Every value of one weight matrix at 3e38: finite, so the upload's codec takes it."""
        weights = self.model(task)
        matrix = next(n for n, t in weights.items() if t.dim() == 2)
        weights[matrix] = torch.full_like(weights[matrix], HUGE)
        self.record("huge update", lambda: self.push_weights(task, weights, 100))

    def inflated_examples(self, task: participant_pb2.Task) -> None:
        """The model she was sent, unchanged, claiming all the samples she registered."""
        weights = self.model(task)
        self.record("inflated num_examples", lambda: self.push_weights(task, weights, CLAIMED))

    def eval_counts(self, task: participant_pb2.Task, attack: str, per_class: int) -> None:
        """A perfect score on `per_class` samples of each of the 10 classes."""
        ev = participant_pb2.EvalResult(
            correct=[per_class] * 10, total=[per_class] * 10, loss_sum=0.0
        )
        request = participant_pb2.PushResultRequest(
            participant_id=MALLORY, task_id=task.task_id, eval=ev
        )
        self.record(attack, lambda: described(self.client.push(request)))
