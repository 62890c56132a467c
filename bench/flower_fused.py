"""The FUSED side of `bench.flower_compare`: a coordinator and participant agents as real
processes, the agents reaching the coordinator through a counting proxy."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from bench.flower_env import log
from bench.flower_job import Job, global_accuracy
from bench.flower_report import message_bytes_by_method, per_round, system_report
from bench.proxy import CountingProxy, write_events

if TYPE_CHECKING:
    import torch

    from fused.common.domain.specs import TrainingSpec
    from fused.tools.launch import LocalFederation


def _follow(fed: LocalFederation, job_id: str, timeout_s: float) -> Any:
    from fused.proto.v1 import control_pb2

    stub = fed.control()
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=timeout_s):
        if event.kind in {"job_completed", "job_failed"}:
            break
    return stub.GetJob(control_pb2.GetJobRequest(job_id=job_id), timeout=30)


def _spec(job: Job) -> TrainingSpec:
    from fused.common.domain.specs import TrainingSpec

    return TrainingSpec(
        model=job.model,
        rounds=job.rounds,
        train=job.train_config(),
        participants_per_round=0,
        min_participants=job.participants,
        round_deadline_s=job.timeout_s,
        seed=job.seed,
        evaluate_each_round=False,
    )


def _round_times(info: Any, rounds: int) -> tuple[list[float], list[float]]:
    train = sorted((r for r in info.rounds if r.phase == "train"), key=lambda r: r.round)
    if len(train) != rounds:
        raise RuntimeError(f"FUSED ran {len(train)} rounds, not {rounds}")
    return [r.started_at for r in train], [r.finished_at for r in train]


def run_fused(job: Job) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from fused.client.initial_weights import start_training
    from fused.common.codecs.tensor_codec import decode_tensors
    from fused.proto.v1 import control_pb2, participant_pb2
    from fused.tools.launch import LocalFederation, scrape

    work = job.work_dir / "fused"
    shutil.rmtree(work, ignore_errors=True)
    agent_flags = () if job.agent_warmup else ("--skip-warmup",)
    with LocalFederation(work) as fed:
        fed.start_coordinator()
        with CountingProxy(fed.port) as proxy:
            agents = LocalFederation(work)  # participants reach the coordinator via the proxy
            agents.port = proxy.port
            try:
                for i in range(job.participants):
                    agents.start_participant(job.shards / f"p{i}", *agent_flags)
                fed.wait_online(job.participants, timeout_s=180)  # after their warm-up
                before = scrape(fed.metrics_port)
                log(f"FUSED: {job.participants} participants online; training")
                started = start_training(fed.control(), _spec(job))
                info = _follow(fed, started.job_id, job.timeout_s)
                if info.status != "completed":
                    raise RuntimeError(f"FUSED job {info.job_id} {info.status}: {info.reason}")
                started_at, finished_at = _round_times(info, job.rounds)
                after = scrape(fed.metrics_port)
                result = json.loads(info.result_json)
                chunks = fed.control().ExportModel(
                    control_pb2.ExportModelRequest(version_id=result["version_id"]), timeout=60
                )
                blob = b"".join(c.data for c in chunks)
            finally:
                agents.stop()
            events = proxy.events()
            connections = proxy.connections
    write_events(work / "wire_events.csv", events)
    weights, _ = decode_tensors(blob)
    accuracy = global_accuracy(job, weights)
    report = system_report(events, started_at, finished_at, job.warmup, accuracy, job.participants)
    service = participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"]
    methods = frozenset(m.name for m in service.methods)  # not the control service's
    train = message_bytes_by_method(before, after, methods, frozenset({"train"}))
    by_method = message_bytes_by_method(before, after, methods, frozenset({"train", "none"}))
    report.update(
        {
            # Counters cannot be cut at round boundaries: these average over every round run.
            "message_bytes_per_round": per_round(sum(train.values()), job.rounds),
            "message_bytes_by_method_per_round": {
                method: per_round(n, job.rounds) for method, n in by_method.items()
            },
            "federated_accuracy": result["accuracy"],
            "model_payload_bytes": len(blob),
            "connections": connections,
            "agent_warmup": job.agent_warmup,
        }
    )
    return report, weights
