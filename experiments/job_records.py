"""Reading an experiment's jobs from a running federation: follow a job to its end, export a
model, the wire counters, and per-round curves and bytes from the job's round records."""

from __future__ import annotations

import json
from typing import Any

from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape


def run_job(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    stub = fed.control()
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id)):
        if event.kind in ("round_completed", "job_completed", "job_failed"):
            print(f"  {event.kind} {event.phase} {event.round}: {event.message}", flush=True)
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    if info.status != "completed":
        raise RuntimeError(f"job {info.job_id} {info.status}: {info.reason}")
    return info


def export(fed: LocalFederation, version_id: str = "") -> bytes:
    chunks = fed.control().ExportModel(control_pb2.ExportModelRequest(version_id=version_id))
    return b"".join(c.data for c in chunks)


def wire_bytes(port: int) -> float:
    return sum(v for (name, _), v in scrape(port).items() if name == "fused_wire_bytes_total")


def curve(info: control_pb2.JobInfo) -> list[dict[str, Any]]:
    """Federated RA/FA after each round (round 0: before unlearning)."""
    points = []
    for r in info.rounds:
        if r.phase == "evaluate":
            metrics = json.loads(r.metrics_json)
            points.append({"round": r.round, "ra": metrics["accuracy"], "fa": metrics["fa"]})
    return points


def bytes_per_round(info: control_pb2.JobInfo, phase: str) -> float:
    """Mean bytes a training participant moves in one round (its phase plus that round's
    evaluation: participants cache artifacts, so downloads may land in either)."""
    per_round: dict[int, dict[str, float]] = {}
    for r in info.rounds:
        if r.round == 0 or r.phase not in (phase, "evaluate"):
            continue
        moved = json.loads(r.metrics_json)["bytes"]
        bucket = per_round.setdefault(r.round, {})
        for pid in set(moved["up"]) | set(moved["down"]):
            bucket[pid] = bucket.get(pid, 0.0) + moved["up"].get(pid, 0) + moved["down"].get(pid, 0)
    trainers = {
        r.round: set(r.participants) for r in info.rounds if r.phase == phase and r.round > 0
    }
    samples = [b[p] for rnd, b in per_round.items() for p in trainers.get(rnd, set()) if p in b]
    return sum(samples) / len(samples) if samples else 0.0
