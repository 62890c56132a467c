"""bench.load's side of the coordinator: its configuration, credentials and the job.

The run's settings (`LoadConfig`), the coordinator flags that hold N participants, fresh
tokens with the auth file of their hashes, and the training job started through the
ControlService and followed to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench.load_participant import Metadata
from fused.cli.pki import new_token, write_auth_file
from fused.client.upload import artifact_chunks
from fused.common.rpc.channels import ServerLimits
from fused.common.rpc.identity import AuthFile, hash_token
from fused.proto.v1 import common_pb2, control_pb2, control_pb2_grpc


@dataclass(frozen=True)
class LoadConfig:
    participants: int
    rounds: int
    work_s: float
    round_deadline_s: float
    wait_for_participants_s: float
    register_timeout_s: float
    register_spread_s: float
    job_timeout_s: float
    evaluate_each_round: bool
    processes: int = 0  # load processes; 0: one per PARTICIPANTS_PER_PROCESS
    tokens: dict[str, str] = field(default_factory=dict)  # participant id -> bearer token
    control_token: str | None = None


TERMINAL = frozenset({"completed", "failed"})
DEFAULT_LIMITS = ServerLimits()
CONTROL_OPTIONS: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 256 << 20)]


async def follow_job(
    stub: control_pb2_grpc.ControlServiceAsyncStub,
    job_id: str,
    md: Metadata,
    timeout_s: float,
) -> control_pb2.JobInfo:
    """Follow the job's events to its end (logged to stderr); returns its final JobInfo."""

    async def watch() -> None:
        call = stub.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), metadata=md)
        async for event in call:
            log(f"{event.kind}: {event.message}")

    deadline = time.monotonic() + timeout_s
    while True:
        # WatchJob ends when the job does; GetJob confirms, also if the stream broke.
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await asyncio.wait_for(watch(), timeout=max(1.0, deadline - time.monotonic()))
        info = await stub.GetJob(control_pb2.GetJobRequest(job_id=job_id), timeout=60, metadata=md)
        if info.status in TERMINAL or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(1.0)


def log(message: str) -> None:
    print(f"[bench.load] {message}", file=sys.stderr, flush=True)


async def run_job(
    config: LoadConfig, target: str, initial_weights: bytes, out: dict[str, Any]
) -> control_pb2.JobInfo:
    """Upload the initial weights, start the training job and follow it to its end."""
    control_md: Metadata = (
        (("authorization", f"Bearer {config.control_token}"),) if config.control_token else ()
    )
    async with grpc.aio.insecure_channel(target, options=CONTROL_OPTIONS) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel)
        initial = await control.UploadArtifact(
            artifact_chunks(initial_weights), timeout=30, metadata=control_md
        )
        spec = control_pb2.TrainingSpec(
            model="mlp",
            init_weights=initial.digest,
            rounds=config.rounds,
            train=common_pb2.TrainConfig(
                local_epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32
            ),
            participants_per_round=0,  # all
            min_participants=config.participants,
            round_deadline_s=config.round_deadline_s,
            seed=0,
            wait_for_participants_s=config.wait_for_participants_s,
            evaluate_each_round=config.evaluate_each_round,
        )
        job = await control.StartTraining(
            control_pb2.StartTrainingRequest(spec=spec), timeout=30, metadata=control_md
        )
        job_started = time.monotonic()
        info = await follow_job(control, job.job_id, control_md, config.job_timeout_s)
        out["job_seconds"] = round(time.monotonic() - job_started, 2)
    return info


def capacity_args(participants: int) -> list[str]:
    """Coordinator limits that hold this many participants: a connection each, and a long
    poll plus a heartbeat each in progress (the defaults suit 4,000)."""
    connections = max(DEFAULT_LIMITS.max_connections, participants + 64)
    rpcs = max(DEFAULT_LIMITS.max_concurrent_rpcs, 2 * participants + 64)
    return [f"--max-connections={connections}", f"--max-concurrent-rpcs={rpcs}"]


def make_credentials(participants: int, out: Path) -> tuple[dict[str, str], str, Path]:
    """Fresh bearer tokens for every participant and an operator, and the coordinator's auth
    file of their hashes: the load then runs through real authentication."""
    tokens = {f"load-{i:05d}": new_token() for i in range(participants)}
    operator = new_token()
    auth = AuthFile(
        {pid: hash_token(t) for pid, t in tokens.items()}, {"load": hash_token(operator)}
    )
    path = out / "auth.toml"
    write_auth_file(path, auth)
    return tokens, operator, path
