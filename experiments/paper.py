"""Reproduce the FUSED paper's experiments through the real system.

    python -m experiments.paper --dataset fashionmnist --paradigm client|class|sample \
        [--participants 10] [--seeds 3] [--quick]

Partitions the data (Dirichlet alpha=1.0), starts a coordinator and one process per
participant on loopback, trains the original model by FedAvg, then runs every method from
that model: fused, fused_random (same adapter budget on random layers), finetune and
retrain. Evaluates the exported versions centrally (official test set, forgotten data),
reads bytes from the coordinator's Prometheus counters and writes
results/<dataset>-<paradigm>.json with two PNG plots. Each seed (partition, initialisation,
masks) is a run of its own; the JSON holds every figure's mean and standard deviation over
them (experiments.seeds), and the plots show the first seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.central import EvalSets, build_sets, evaluate_weights
from experiments.job_records import bytes_per_round, curve, export, run_job, wire_bytes
from experiments.plots import plot_bytes, plot_curves
from experiments.seeds import combine, git_commit
from fused.client.initial_weights import start_training
from fused.common.codecs.tensor_codec import decode_tensors
from fused.common.domain.specs import (
    DEFAULT_UNLEARNING_ROUNDS,
    FinetuneConfig,
    FusedConfig,
    RetrainConfig,
    TrainingSpec,
    UnlearningSpec,
)
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.models import default_model_for, init_model
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation

METHOD_PHASES = {
    "fused": "adapter",
    "fused_random": "adapter",
    "finetune": "finetune",
    "retrain": "retrain",
}


@dataclass(frozen=True)
class Budget:
    train_rounds: int
    unlearn_rounds: int
    local_epochs: int
    relearn_epochs: int


# Unlearning: at most DEFAULT_UNLEARNING_ROUNDS, stopping once FA stops falling (the default).
FULL = Budget(
    train_rounds=30, unlearn_rounds=DEFAULT_UNLEARNING_ROUNDS, local_epochs=2, relearn_epochs=2
)
QUICK = Budget(train_rounds=2, unlearn_rounds=2, local_epochs=1, relearn_epochs=1)


@dataclass(frozen=True)
class Experiment:
    dataset: str
    paradigm: str
    participants: int
    budget: Budget
    lr: float
    batch_size: int
    top_k: int
    density: float
    selection: str
    unlearn_lr: float | None  # None: the default (the training's settings, lr doubled)
    trigger_size: int
    backdoor_count: int
    seed: int
    data_dir: Path | None
    work: Path
    out: Path

    @property
    def train(self) -> TrainConfig:
        return TrainConfig(self.budget.local_epochs, self.lr, 0.9, 5e-4, self.batch_size, self.seed)

    @property
    def unlearn_train(self) -> TrainConfig | None:
        """None: the coordinator's default, derived from the training job."""
        if self.unlearn_lr is None:
            return None
        return dataclasses.replace(self.train, lr=self.unlearn_lr)

    def forget(self) -> ForgetSpec:
        if self.paradigm == "client":
            return ForgetSpec("participant", participant_id="p0")
        if self.paradigm == "class":
            return ForgetSpec("class", class_label=0)
        shard = json.loads((self.work / "shards" / "p0" / "shard.json").read_text())
        return ForgetSpec(
            "samples",
            participant_id="p0",
            sample_ids=tuple(shard["backdoor_ids"]),
            relabel=True,
            trigger_size=self.trigger_size,
            trigger_target=0,
        )


def partition(exp: Experiment) -> dict[str, Any]:
    config = PartitionConfig(
        num_participants=exp.participants,
        alpha=1.0,
        seed=exp.seed,
        attacker=0 if exp.paradigm == "client" else None,
        backdoor_participant=0 if exp.paradigm == "sample" else None,
        backdoor_count=exp.backdoor_count if exp.paradigm == "sample" else 0,
        backdoor_target=0,
        trigger_size=exp.trigger_size,
    )
    return partition_to_directory(exp.dataset, exp.data_dir, exp.work / "shards", config)


def training_spec(exp: Experiment) -> TrainingSpec:
    """The original model's FedAvg training: every participant, every round."""
    return TrainingSpec(
        rounds=exp.budget.train_rounds,
        train=exp.train,
        min_participants=exp.participants,
        round_deadline_s=900,
        seed=exp.seed,
        evaluate_each_round=False,
    )


def random_config(exp: Experiment, model: str, budget: int) -> FusedConfig:
    """K tensors drawn at random (seeded) among those that together hold at least `budget`
    values, with the density that gives the adapter `budget` values: FUSED's parameter
    budget on layers chosen blindly."""
    sizes = {n: p.numel() for n, p in init_model(model, 10, 0).named_parameters()}
    rng = random.Random(exp.seed + 1)
    while True:
        names = sorted(rng.sample(sorted(sizes), exp.top_k))
        total = sum(sizes[n] for n in names)
        if total >= budget:
            return FusedConfig(exp.top_k, tuple(names), budget / total, selection="cli")


def method_specs(exp: Experiment, base: str, model: str) -> dict[str, UnlearningSpec]:
    common = UnlearningSpec(
        forget=exp.forget(),
        base_version=base,
        rounds=exp.budget.unlearn_rounds,
        train=exp.unlearn_train,
        config=FusedConfig(top_k=exp.top_k, density=exp.density, selection=exp.selection),
        min_participants=exp.participants - 1,
        round_deadline_s=900,
        seed=exp.seed,
        evaluate_each_round=True,
    )
    return {
        "fused": common,
        "finetune": dataclasses.replace(common, config=FinetuneConfig()),
        # The gold standard: retrain from scratch with the original training budget.
        "retrain": dataclasses.replace(
            common, config=RetrainConfig(), rounds=exp.budget.train_rounds, train=exp.train
        ),
    }


def fixed_layers(spec: UnlearningSpec) -> list[str]:
    return list(spec.config.layers) if isinstance(spec.config, FusedConfig) else []


def run_method(
    fed: LocalFederation,
    exp: Experiment,
    name: str,
    spec: UnlearningSpec,
    sets: EvalSets,
    model: str,
    base_sha: str,
) -> dict[str, Any]:
    print(f"[{name}]", flush=True)
    before = wire_bytes(fed.metrics_port)
    stub = fed.control()
    request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
    info = run_job(fed, stub.StartUnlearning(request, timeout=30))
    total = wire_bytes(fed.metrics_port) - before
    result = json.loads(info.result_json)
    version = result["version_id"]
    data = export(fed, version)
    weights, _ = decode_tensors(data)
    metrics = evaluate_weights(model, weights, sets, exp.train, exp.budget.relearn_epochs)
    stub.Revert(control_pb2.VersionRequest(version_id=version))
    reverted = hashlib.sha256(export(fed)).hexdigest() == base_sha
    stub.Reapply(control_pb2.VersionRequest(version_id=version))
    reapplied = export(fed) == data
    stub.Revert(control_pb2.VersionRequest(version_id=version))  # serve the original again
    return {
        **metrics,
        "bytes_per_round": bytes_per_round(info, METHOD_PHASES[name]),
        "bytes_total": total / exp.participants,
        "seconds": info.updated_at - info.created_at,
        "revert_exact": reverted and reapplied,
        "rounds": result["rounds_run"],
        "stopped": result["stopped"],
        "version_id": version,
        "critical_layers": result.get("critical_layers") or fixed_layers(spec),
        "adapter_params": result.get("adapter_params"),
        "federated_ra_fa_after": [result["ra_after"], result["fa_after"]],
        "curve": curve(info),
    }


def run(exp: Experiment) -> dict[str, Any]:
    started = time.monotonic()
    summary = partition(exp)
    sets = build_sets(exp.work / "shards", exp.paradigm)
    model = default_model_for(summary["dataset"])
    with LocalFederation(exp.work / "processes") as fed:
        fed.start_coordinator()
        for pid in summary["participant_ids"]:
            fed.start_participant(exp.work / "shards" / pid)
        fed.wait_online(exp.participants, timeout_s=300)
        print(f"[train] {exp.participants} participants online", flush=True)
        trained = run_job(fed, start_training(fed.control(), training_spec(exp)))
        base = json.loads(trained.result_json)["version_id"]
        base_data = export(fed, base)
        base_weights, _ = decode_tensors(base_data)
        original = evaluate_weights(model, base_weights, sets, exp.train, exp.budget.relearn_epochs)
        original["seconds"] = trained.updated_at - trained.created_at
        sha = hashlib.sha256(base_data).hexdigest()
        specs = method_specs(exp, base, model)
        methods = {"fused": run_method(fed, exp, "fused", specs.pop("fused"), sets, model, sha)}
        budget = int(methods["fused"]["adapter_params"])  # the same budget on random layers
        blind = dataclasses.replace(specs["finetune"], config=random_config(exp, model, budget))
        methods["fused_random"] = run_method(fed, exp, "fused_random", blind, sets, model, sha)
        for name, unlearning in specs.items():
            methods[name] = run_method(fed, exp, name, unlearning, sets, model, sha)
    settings = {
        **{
            k: v for k, v in dataclasses.asdict(exp).items() if k not in ("work", "out", "data_dir")
        },
        "model": model,
        "partition_seed": exp.seed,
        "alpha": 1.0,
        "participant_sizes": {p["id"]: p["train_size"] for p in summary["participants"]},
        "torch": torch.__version__,
        "commit": git_commit(),
        "wall_seconds": time.monotonic() - started,
    }
    return {"methods": methods, "original": original, "config": settings}


def parse(argv: Sequence[str] | None) -> tuple[Experiment, int]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="fashionmnist", choices=["fashionmnist", "digits"])
    parser.add_argument("--paradigm", required=True, choices=["client", "class", "sample"])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a few minutes, for smoke tests")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--lr", type=float, default=None, help="default: 0.005 (paper)")
    parser.add_argument("--batch-size", type=int, default=64)
    defaults = FusedConfig()  # every unlearning knob defaults to the system's default
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--density", type=float, default=defaults.density)
    parser.add_argument("--selection", default=defaults.selection)
    parser.add_argument(
        "--unlearn-rounds", type=int, default=None, help=f"default: {FULL.unlearn_rounds} (2 quick)"
    )
    parser.add_argument(
        "--unlearn-lr", type=float, default=None, help="default: the training's, doubled"
    )
    parser.add_argument("--trigger-size", type=int, default=4)
    parser.add_argument("--backdoor-count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds run (partition, initialisation, masks)"
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--work", type=Path, default=None, help="default: runs/paper-<...>")
    args = parser.parse_args(argv)
    name = f"{args.dataset}-{args.paradigm}"
    budget = QUICK if args.quick else FULL
    if args.unlearn_rounds is not None:
        budget = dataclasses.replace(budget, unlearn_rounds=args.unlearn_rounds)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    exp = Experiment(
        dataset=args.dataset,
        paradigm=args.paradigm,
        participants=args.participants,
        budget=budget,
        unlearn_lr=args.unlearn_lr,
        lr=args.lr if args.lr is not None else (0.005 if args.dataset == "fashionmnist" else 0.05),
        batch_size=args.batch_size,
        top_k=args.top_k,
        density=args.density,
        selection=args.selection,
        trigger_size=args.trigger_size,
        backdoor_count=args.backdoor_count,
        seed=args.seed,
        data_dir=args.data_dir,
        work=args.work or Path("runs") / f"paper-{name}",
        out=args.out,
    )
    return exp, args.seeds


def write(exp: Experiment, results: dict[str, Any]) -> None:
    exp.out.mkdir(parents=True, exist_ok=True)
    stem = exp.out / f"{exp.dataset}-{exp.paradigm}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot_curves(results, stem.with_name(stem.name + "-rounds.png"))
    plot_bytes(results, stem.with_name(stem.name + "-bytes.png"))


def main(argv: Sequence[str] | None = None) -> int:
    first, seeds = parse(argv)
    runs = []
    for seed in range(first.seed, first.seed + seeds):
        exp = dataclasses.replace(first, seed=seed, work=first.work / f"seed-{seed}")
        print(f"=== seed {seed} ({seed - first.seed + 1} of {seeds})", flush=True)
        runs.append(run(exp))
        results = combine(runs)
        write(first, results)  # after every seed: a stopped run keeps the seeds it finished
    table = {
        n: {
            k: m[k]
            for k in ("ra", "fa", "mia_auc", "rea", "bytes_per_round", "seconds", "revert_exact")
        }
        for n, m in results["methods"].items()
    }
    print(json.dumps({"original": results["original"], "methods": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
