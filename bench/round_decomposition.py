"""Where a round's wall time goes, in a real federation: FUSED, finetune and retrain.

    python -m bench.round_decomposition [--participants 4] [--rounds 3] [--epochs 1]

Partitions FashionMNIST (Dirichlet alpha 1.0, seed 0, p0 a label flipper), starts a coordinator
and one agent process per participant on loopback (tools.launch), trains LeNet-5 by FedAvg,
then runs each method for `rounds` rounds forgetting p0 (every round run, each evaluated):
FUSED on fc1.weight and fc2.weight (rho 0.05), finetune, and retrain with the same local
settings. Each round is decomposed from the coordinator's round records, which hold what
every participant's agent measured of its task (RoundMetrics.timings):

  training       the slowest participant's compute (its task's critical path)
  transfer       that participant's fetch and upload
  codec          its decode and encode
  orchestration  the round's wall time at the coordinator less that participant's whole task:
                 dispatch, long polls, result checks, aggregation, storing the round
  evaluation     the evaluation round that follows (wall), and within it the slowest
                 participant's compute
  between        from the end of that evaluation to the next round's start

On a busy host wall time is mostly waiting for a core, so each round also gets the CPU-seconds
the participants' processes and the coordinator's spent in it (Linux /proc, sampled when the
coordinator reports the round done): `participants_cpu_s` (all agents together) and
`coordinator_cpu_s`, and the same for its evaluation round. Seconds are means over rounds 2..
(round 1 also fetches the base); round 1 is listed too. Prints JSON; the processes' logs stay
under --work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fused.client.initial_weights import start_training
from fused.common.domain.round_metrics import RoundMetrics
from fused.common.domain.specs import (
    FinetuneConfig,
    FusedConfig,
    RetrainConfig,
    TrainingSpec,
    UnlearningSpec,
)
from fused.common.domain.tasks import ForgetSpec, TaskTimings
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation

PHASES = {"fused": "adapter", "finetune": "finetune", "retrain": "retrain"}
FC = ("fc1.weight", "fc2.weight")


RoundCpu = dict[tuple[str, int], dict[str, float]]  # (phase, round) -> CPU-seconds by side


def cpu_seconds(pid: int) -> float:
    """User plus system CPU-seconds of a live process (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sides(fed: LocalFederation) -> dict[str, float]:
    assert fed.coordinator is not None
    agents = sum(cpu_seconds(p.pid) for p in fed.participants.values())
    return {"participants_cpu_s": agents, "coordinator_cpu_s": cpu_seconds(fed.coordinator.pid)}


def run_job(fed: LocalFederation, job: control_pb2.JobInfo) -> tuple[control_pb2.JobInfo, RoundCpu]:
    """Follow the job to its end; the CPU each round cost, by side."""
    stub = fed.control()
    last, per_round = _sides(fed), {}
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id)):
        if event.kind == "round_completed":
            now = _sides(fed)
            per_round[(event.phase, event.round)] = {k: now[k] - last[k] for k in now}
            last = now
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    if info.status != "completed":
        raise RuntimeError(f"job {info.job_id} {info.status}: {info.reason}")
    return info, per_round


def specs(base: str, rounds: int, train: TrainConfig, others: int) -> dict[str, UnlearningSpec]:
    common = UnlearningSpec(
        forget=ForgetSpec("participant", participant_id="p0"),
        config=FusedConfig(top_k=2, layers=FC, density=0.05),
        base_version=base,
        rounds=rounds,
        train=train,
        min_participants=others,
        round_deadline_s=900,
        stop_patience=0,  # every round runs: the same number for every method
    )
    return {
        "fused": common,
        "finetune": dataclasses.replace(common, config=FinetuneConfig()),
        "retrain": dataclasses.replace(common, config=RetrainConfig()),
    }


def _slowest(metrics: RoundMetrics) -> TaskTimings | None:
    return max(metrics.timings.values(), key=lambda t: t.total_s, default=None)


def decompose(info: control_pb2.JobInfo, phase: str, cpu: RoundCpu) -> list[dict[str, Any]]:
    """One row per round of `phase`: the split described in the module's docstring."""
    records = {(r.phase, r.round): r for r in info.rounds}
    rows = []
    for (kind, n), r in sorted(records.items(), key=lambda item: item[1].started_at):
        if kind != phase:
            continue
        wall = r.finished_at - r.started_at
        ev = records.get(("evaluate", n))
        row: dict[str, Any] = {"round": n, "round_s": wall, **cpu.get((phase, n), {})}
        slowest = _slowest(RoundMetrics.from_dict(json.loads(r.metrics_json)))
        if slowest is not None:
            row["training_s"] = slowest.compute_s
            row["transfer_s"] = slowest.fetch_s + slowest.upload_s
            row["codec_s"] = slowest.decode_s + slowest.encode_s
            row["orchestration_s"] = wall - slowest.total_s
        if ev is not None:
            row["evaluation_s"] = ev.finished_at - ev.started_at
            judged = _slowest(RoundMetrics.from_dict(json.loads(ev.metrics_json)))
            row["evaluation_compute_s"] = judged.compute_s if judged else None
            for side, used in cpu.get(("evaluate", n), {}).items():
                row[f"evaluation_{side}"] = used
            after = [x.started_at for x in info.rounds if x.started_at >= ev.finished_at]
            row["between_s"] = min(after) - ev.finished_at if after else None
        rows.append(row)
    return rows


def mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k != "round"]
    values = {k: [r[k] for r in rows if r.get(k) is not None] for k in keys}
    return {k: round(statistics.fmean(v), 4) for k, v in values.items() if v}


def summarize(info: control_pb2.JobInfo, phase: str, cpu: RoundCpu) -> dict[str, Any]:
    rows = decompose(info, phase, cpu)
    later = [r for r in rows if r["round"] >= 2] or rows
    return {
        "job_s": round(info.updated_at - info.created_at, 3),
        "per_round_mean": mean_rows(later),
        "round_1": {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[0].items()},
        "phases_s": _phase_seconds(info),
        "participants_cpu_s": round(sum(c["participants_cpu_s"] for c in cpu.values()), 3),
    }


def _phase_seconds(info: control_pb2.JobInfo) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in info.rounds:
        out[r.phase] = round(out.get(r.phase, 0.0) + r.finished_at - r.started_at, 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/round-decomposition"))
    args = parser.parse_args(argv)
    train = TrainConfig(local_epochs=args.epochs, lr=0.01, batch_size=64)
    config = PartitionConfig(num_participants=args.participants, seed=0, attacker=0)
    summary = partition_to_directory("fashionmnist", None, args.work / "shards", config)
    report: dict[str, Any] = {"participants": args.participants, "epochs": args.epochs}
    with LocalFederation(args.work / "processes") as fed:
        fed.start_coordinator()
        for pid in summary["participant_ids"]:
            fed.start_participant(args.work / "shards" / pid)
        fed.wait_online(args.participants, timeout_s=300)
        spec = TrainingSpec(
            rounds=args.train_rounds,
            train=train,
            min_participants=args.participants,
            evaluate_each_round=False,
        )
        trained, cpu = run_job(fed, start_training(fed.control(), spec))
        base = json.loads(trained.result_json)["version_id"]
        report["train"] = summarize(trained, "train", cpu)
        for name, unlearning in specs(base, args.rounds, train, args.participants - 1).items():
            request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(unlearning))
            info, cpu = run_job(fed, fed.control().StartUnlearning(request, timeout=30))
            report[name] = summarize(info, PHASES[name], cpu)
            fed.control().Revert(control_pb2.VersionRequest(version_id=_version(info)))
    print(json.dumps(report, indent=2))
    return 0


def _version(info: control_pb2.JobInfo) -> str:
    return str(json.loads(info.result_json)["version_id"])


if __name__ == "__main__":
    raise SystemExit(main())
