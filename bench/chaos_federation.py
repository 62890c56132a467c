"""The federation bench.chaos breaks: real processes on loopback, and the checks scenarios make.

One coordinator and three agents on the digits data set; a scenario breaks something, then
checks what must still hold, raising Failed with what it saw.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.proto.v1 import common_pb2, control_pb2
from fused.tools.launch import LocalFederation

PARTICIPANTS = ("p0", "p1", "p2")
OFFLINE_AFTER_S = 3.0
# Upload limits the floods reach in seconds (an honest update is tens of KB).
MAX_UPLOAD_MB, UPLOAD_QUOTA_MB, UPLOAD_STREAMS = 4, 16, 4
UPLOAD_IDLE_S, UPLOAD_MIN_KIB_S, UPLOAD_GRACE_S = 2.0, 512, 2.0
COORDINATOR_ARGS = (
    *("--offline-after-s", str(OFFLINE_AFTER_S), "--heartbeat-interval-s", "0.5"),
    *("--max-upload-mb", str(MAX_UPLOAD_MB), "--upload-quota-mb", str(UPLOAD_QUOTA_MB)),
    *("--upload-max-streams", str(UPLOAD_STREAMS), "--upload-idle-timeout-s", str(UPLOAD_IDLE_S)),
    *(
        "--upload-min-rate-kib-s",
        str(UPLOAD_MIN_KIB_S),
        "--upload-rate-grace-s",
        str(UPLOAD_GRACE_S),
    ),
    "--per-participant-metrics",  # chaos_inputs checks the participant labels stay bounded
)
AGENT_ARGS = ("--backoff-max-s", "1")
DEADLINE_S = 120.0  # far above what any round needs: finishing early shows the reaper worked


class Failed(AssertionError):
    """A scenario's check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass
class Outcome:
    name: str
    passed: bool
    detail: str


class Chaos:
    """One federation of real processes that the scenarios break and restore in turn."""

    def __init__(self, work: Path) -> None:
        self.shards = work / "shards"
        partition_to_directory(
            "digits", None, self.shards, PartitionConfig(num_participants=len(PARTICIPANTS))
        )
        self.fed = LocalFederation(work / "federation")
        self.fed.start_coordinator(*COORDINATOR_ARGS)
        for pid in PARTICIPANTS:
            self.start(pid)
        self.fed.wait_online(len(PARTICIPANTS))
        self.control = self.fed.control()  # one channel; it reconnects across restarts

    def start(self, pid: str) -> None:
        self.fed.start_participant(self.shards / pid, *AGENT_ARGS, name=pid)

    def kill(self, pid: str) -> None:
        proc = self.fed.participants.pop(pid)
        proc.kill()
        proc.wait()

    def restart_coordinator(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.fed.coordinator is not None
        self.fed.coordinator.send_signal(sig)
        self.fed.coordinator.wait(60)
        self.fed.start_coordinator(*COORDINATOR_ARGS, port=self.fed.port)

    def train(self, rounds: int, min_participants: int, seed: int = 7) -> str:
        spec = TrainingSpec(
            rounds=rounds,
            train=TrainConfig(2, 0.05, momentum=0.0, weight_decay=0.0, batch_size=32, seed=seed),
            min_participants=min_participants,
            round_deadline_s=DEADLINE_S,
            seed=seed,
            wait_for_participants_s=60,
        )
        return str(start_training(self.control, spec).job_id)

    def unlearn(self, base_version: str, forget_pid: str, seed: int = 5) -> str:
        forget = common_pb2.ForgetSpec(paradigm="participant", participant_id=forget_pid)
        return self.forget(base_version, forget, seed)

    def forget(self, base_version: str, forget: common_pb2.ForgetSpec, seed: int = 5) -> str:
        spec = control_pb2.UnlearningSpec(
            base_version=base_version,
            forget=forget,
            method="fused",
            rounds=4,
            train=common_pb2.TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=seed),
            top_k=2,
            density=0.1,
            min_participants=2,
            round_deadline_s=DEADLINE_S,
            wait_for_participants_s=60,
            seed=seed,
            evaluate_each_round=True,
        )
        job = self.control.StartUnlearning(control_pb2.StartUnlearningRequest(spec=spec))
        return str(job.job_id)

    def job(self, job_id: str) -> control_pb2.JobInfo:
        reply: control_pb2.JobInfo = self.control.GetJob(
            control_pb2.GetJobRequest(job_id=job_id), timeout=10
        )
        return reply

    def wait_until(
        self, job_id: str, done: Callable[[control_pb2.JobInfo], bool], timeout_s: float = 120
    ) -> control_pb2.JobInfo:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = self.job(job_id)
            except grpc.RpcError:  # the coordinator may be restarting
                time.sleep(0.2)
                continue
            if done(info):
                return info
            check(info.status not in ("completed", "failed") or done(info), f"job ended: {info}")
            time.sleep(0.02)
        raise Failed(f"job {job_id} did not reach the awaited state within {timeout_s:g} s")

    def finished(self, job_id: str) -> control_pb2.JobInfo:
        return self.wait_until(job_id, lambda j: j.status in ("completed", "failed"))

    def online(self) -> set[str]:
        reply = self.control.ListParticipants(control_pb2.ListParticipantsRequest())
        return {p.participant_id for p in reply.participants if p.online}

    def close(self) -> None:
        self.fed.stop()


def committed(info: control_pb2.JobInfo, phase: str = "train") -> list[control_pb2.RoundInfo]:
    return [r for r in info.rounds if r.phase == phase]


def shard_sizes(chaos: Chaos) -> dict[str, int]:
    """Training samples each participant registered with."""
    reply = chaos.control.ListParticipants(control_pb2.ListParticipantsRequest())
    return {p.participant_id: p.num_train for p in reply.participants}


def result_version(info: control_pb2.JobInfo) -> str:
    return str(json.loads(info.result_json)["version_id"])
