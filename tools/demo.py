"""`make demo`: a real federation on loopback trains on digits, then forgets an attacker.

Partitions the embedded digits data set into 4 shards with participant p0 a label-flipping
attacker, starts the coordinator and 4 participant processes, trains with FedAvg, forgets p0
with FUSED, reverts and reapplies the unlearning (checking the exported models' hashes), reads
the bytes on the wire from the coordinator's metrics endpoint, writes runs/demo/report.json
and stops everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fused.cli.watch import event_line
from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.rpc.control_convert import event_from_proto, unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape

PARTICIPANTS = 4
TRAINING = TrainingSpec(
    rounds=15,
    train=TrainConfig(local_epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32),
    min_participants=PARTICIPANTS,
    round_deadline_s=120,
    wait_for_participants_s=60,
    evaluate_each_round=False,  # so each round's bytes are its own, not a cached download
)
# The system's defaults, as `fusedctl unlearn --participant p0` sends them: no budget of its
# own (the training's optimiser settings at twice its lr, at most 20 rounds, stopping once FA
# stops falling).
UNLEARNING = UnlearningSpec(
    forget=ForgetSpec("participant", participant_id="p0"),
    min_participants=PARTICIPANTS - 1,
    round_deadline_s=120,
)


def bytes_by_phase(metrics_port: int) -> dict[str, dict[str, float]]:
    """Sum the coordinator's wire byte counters per job phase and direction."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"sent": 0.0, "received": 0.0})
    for (name, labels), value in scrape(metrics_port).items():
        if name == "fused_wire_bytes_total":
            label = dict(labels)
            totals[label["phase"]][label["direction"]] += value
    return dict(totals)


def follow(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    stub = fed.control()
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id)):
        print(event_line(event_from_proto(event)), flush=True)
    final: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    if final.status != "completed":
        raise RuntimeError(f"{final.kind} job {final.job_id} {final.status}: {final.reason}")
    return final


def export_sha256(fed: LocalFederation, version_id: str = "") -> str:
    """sha256 of the exported bytes of a version ("" = the one being served)."""
    request = control_pb2.ExportModelRequest(version_id=version_id)
    digest = hashlib.sha256()
    for chunk in fed.control().ExportModel(request):
        digest.update(chunk.data)
    return digest.hexdigest()


def per_participant_round(rounds: list[Any], phase: str) -> dict[str, float]:
    """Mean bytes one participant of a `phase` round moved in it and in that round's
    evaluation, both directions: agents cache artifacts, so a download lands in whichever
    task fetches it first."""
    trainers = {r.round: set(r.participants) for r in rounds if r.phase == phase and r.round}
    up: dict[tuple[int, str], float] = {}
    down: dict[tuple[int, str], float] = {}
    for r in rounds:
        if r.round not in trainers or r.phase not in (phase, "evaluate"):
            continue
        moved = json.loads(r.metrics_json)["bytes"]
        for p in trainers[r.round]:
            up[r.round, p] = up.get((r.round, p), 0.0) + moved["up"].get(p, 0)
            down[r.round, p] = down.get((r.round, p), 0.0) + moved["down"].get(p, 0)
    mean_up, mean_down = sum(up.values()) / len(up), sum(down.values()) / len(down)
    return {"up": mean_up, "down": mean_down, "total": mean_up + mean_down}


def train_and_unlearn(fed: LocalFederation) -> dict[str, Any]:
    stub = fed.control()
    trained = follow(fed, start_training(stub, TRAINING))
    base_version = json.loads(trained.result_json)["version_id"]
    base_sha = export_sha256(fed, base_version)
    request_u = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(UNLEARNING))
    unlearned = follow(fed, stub.StartUnlearning(request_u, timeout=30))
    result: dict[str, Any] = json.loads(unlearned.result_json)
    version = result["version_id"]
    unlearned_sha = export_sha256(fed)
    stub.Revert(control_pb2.VersionRequest(version_id=version), timeout=30)
    revert_exact = export_sha256(fed) == base_sha
    stub.Reapply(control_pb2.VersionRequest(version_id=version), timeout=30)
    reapply_exact = export_sha256(fed) == unlearned_sha
    training_round = per_participant_round(list(trained.rounds), "train")
    unlearning_round = per_participant_round(list(unlearned.rounds), "adapter")
    return {
        "final_test_accuracy": json.loads(trained.result_json)["accuracy"],
        "rounds": TRAINING.rounds,
        "base_version": base_version,
        "unlearned_version": version,
        "ra_before": result["ra_before"],
        "ra_after": result["ra_after"],
        "fa_before": result["fa_before"],
        "fa_after": result["fa_after"],
        "critical_layers": result["critical_layers"],
        "selection": result["selection"],
        "unlearning_rounds": result["rounds_run"],
        "stopped": result["stopped"],
        "adapter_params": result["adapter_params"],
        "model_params": result["model_params"],
        "bytes_training_round": training_round,
        "bytes_unlearning_round": unlearning_round,
        "bytes_ratio": training_round["total"] / unlearning_round["total"],
        "unlearning_seconds": result["seconds"],
        "revert_exact": revert_exact,
        "reapply_exact": reapply_exact,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    config = PartitionConfig(num_participants=PARTICIPANTS, seed=0, attacker=0)
    partition_to_directory("digits", None, out / "shards", config)
    with LocalFederation(out / "processes") as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            fed.start_participant(out / "shards" / f"p{i}")
        fed.wait_online(PARTICIPANTS)
        print(f"coordinator on {fed.address}, {PARTICIPANTS} participants online", flush=True)
        report = train_and_unlearn(fed)
        report["participants"] = PARTICIPANTS
        report["bytes_by_phase"] = bytes_by_phase(fed.metrics_port)
        report["seconds"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"report written to {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
