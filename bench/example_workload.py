"""The example workload (examples/wordlang) through a real loopback federation, per seed:
FedAvg training, then forgetting participant p0 with FUSED and with Retrain (from the stored
initial weights). Prints JSON: RA/FA before and after each method, bytes one participant moves
per round of each phase, adapter values against model parameters, and mean ± standard
deviation over seeds (each seed: its own data split, initialisation and mask).

Needs the example installed (`pip install -e examples/wordlang`) and Debian's word lists.
`python -m bench.example_workload [--seeds 3] [--out runs/example-workload]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fused.client.initial_weights import start_training
from fused.common.domain.specs import FusedConfig, RetrainConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.demo import follow, per_participant_round
from fused.tools.launch import LocalFederation

PARTICIPANTS = 4
ROUNDS = 10
LOCAL = TrainConfig(local_epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32)
FORGET = ForgetSpec("participant", participant_id="p0")


def run_seed(seed: int, work: Path) -> dict[str, Any]:
    data = work / "data"
    prepare = [sys.executable, "-m", "fused_wordlang.prepare", "--out", str(data)]
    subprocess.run([*prepare, "--participants", str(PARTICIPANTS), "--seed", str(seed)], check=True)
    with LocalFederation(work / "processes") as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            extra = ("--workload", "wordlang", "--participant-id", f"p{i}")
            fed.start_participant(data / f"p{i}", *extra)
        fed.wait_online(PARTICIPANTS)
        stub = fed.control()
        training = TrainingSpec(
            model="wordlang",
            rounds=ROUNDS,
            train=LOCAL,
            min_participants=PARTICIPANTS,
            seed=seed,
            evaluate_each_round=False,
        )
        trained = follow(fed, start_training(stub, training))
        base = json.loads(trained.result_json)["version_id"]
        out: dict[str, Any] = {
            "seed": seed,
            "train_round": per_participant_round(list(trained.rounds), "train"),
        }
        for method, config, rounds, phase in (
            ("fused", FusedConfig(top_k=2, density=0.1), 5, "adapter"),
            ("retrain", RetrainConfig(), ROUNDS, "retrain"),
        ):
            spec = UnlearningSpec(
                FORGET,
                config,
                base_version=base,
                rounds=rounds,
                train=LOCAL,
                seed=seed,
                min_participants=PARTICIPANTS - 1,
                evaluate_each_round=False,
            )
            request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
            job = follow(fed, stub.StartUnlearning(request, timeout=30))
            result = json.loads(job.result_json)
            out[method] = {
                key: result.get(key)
                for key in ("ra_before", "fa_before", "ra_after", "fa_after", "seconds")
            }
            out[method]["round"] = per_participant_round(list(job.rounds), phase)
            out[method]["rounds"] = rounds
            if method == "fused":
                out["adapter_params"] = result["adapter_params"]
                out["model_params"] = result["model_params"]
                out["critical_layers"] = result["critical_layers"]
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every figure the runs share."""

    def stats(values: list[float]) -> dict[str, float]:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": spread}

    out: dict[str, Any] = {}
    for method in ("fused", "retrain"):
        out[method] = {
            key: stats([r[method][key] for r in runs])
            for key in ("ra_before", "fa_before", "ra_after", "fa_after", "seconds")
        }
        out[method]["bytes_per_round"] = stats([r[method]["round"]["total"] for r in runs])
    out["train_bytes_per_round"] = stats([r["train_round"]["total"] for r in runs])
    out["adapter_share_of_model"] = stats([r["adapter_params"] / r["model_params"] for r in runs])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.example_workload")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/example-workload"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    runs = [run_seed(seed, args.out / f"seed-{seed}") for seed in range(args.seeds)]
    report = {"participants": PARTICIPANTS, "train_rounds": ROUNDS, "runs": runs}
    report["summary"] = summary(runs)
    text = json.dumps(report, indent=2, sort_keys=True)
    (args.out / "report.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
