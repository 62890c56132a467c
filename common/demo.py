"""`make demo`: a real federation on loopback trains the embedded digits data set.

Partitions digits into 4 shards, starts the coordinator and 4 participant processes, trains
with FedAvg, reads the bytes on the wire from the coordinator's metrics endpoint, writes
runs/demo/report.json and stops everything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli.main import _event_line
from common.data.partition import PartitionConfig
from common.data.shards import partition_to_directory
from common.launch import LocalFederation, scrape
from common.serde import training_spec_to_proto
from common.specs import TrainingSpec
from common.train_config import TrainConfig
from proto.fused.v1 import control_pb2

PARTICIPANTS = 4
TRAINING = TrainingSpec(
    rounds=15,
    train=TrainConfig(local_epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32),
    min_participants=PARTICIPANTS,
    round_deadline_s=120,
    wait_for_participants_s=60,
    evaluate_each_round=True,
)


def bytes_by_phase(metrics_port: int) -> dict[str, dict[str, float]]:
    """Sum the coordinator's wire byte counters per job phase and direction."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"sent": 0.0, "received": 0.0})
    for (name, labels), value in scrape(metrics_port).items():
        if name == "fused_wire_bytes_total":
            label = dict(labels)
            totals[label["phase"]][label["direction"]] += value
    return dict(totals)


def run_training(fed: LocalFederation) -> control_pb2.JobInfo:
    stub = fed.control()
    job = stub.StartTraining(
        control_pb2.StartTrainingRequest(spec=training_spec_to_proto(TRAINING)), timeout=30
    )
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id)):
        print(_event_line(event), flush=True)
    final: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    if final.status != "completed":
        raise RuntimeError(f"training job {final.job_id} {final.status}: {final.reason}")
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    partition_to_directory(
        "digits", None, out / "shards", PartitionConfig(num_participants=PARTICIPANTS, seed=0)
    )
    with LocalFederation(out / "processes") as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            fed.start_participant(out / "shards" / f"p{i}")
        fed.wait_online(PARTICIPANTS)
        print(f"coordinator on {fed.address}, {PARTICIPANTS} participants online", flush=True)
        job = run_training(fed)
        result: dict[str, Any] = json.loads(job.result_json)
        report = {
            "final_test_accuracy": result["accuracy"],
            "rounds": TRAINING.rounds,
            "participants": PARTICIPANTS,
            "job_id": job.job_id,
            "model_version": result["version_id"],
            "bytes_by_phase": bytes_by_phase(fed.metrics_port),
            "seconds": round(time.monotonic() - started, 1),
        }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"report written to {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
