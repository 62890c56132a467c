"""Try several FUSED configurations on one trained model: the measurement behind a default.

    python -m experiments.sweep --paradigm sample --configs sweep.json [--seed 0]

Trains the original model once (the paper's set-up: experiments.paper), then runs one FUSED
job per configuration from it, each evaluated every round (federated RA and FA per round) and
at the end centrally. A configuration is a JSON object of overrides: `name`, and any of
`layers` (list), `top_k`, `density`, `rounds`, `lr`, `selection`, `method`. Writes
results/sweep-fashionmnist-<paradigm>-seed<k>-<configs file's stem>.json. A second sweep in
the same work folder reuses the trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.central import build_sets, evaluate_weights
from experiments.job_records import export, run_job
from experiments.paper import FULL, Experiment, partition, run_method, training_spec
from fused.client.initial_weights import start_training
from fused.common.codecs.tensor_codec import decode_tensors
from fused.common.domain.specs import METHOD_CONFIGS, UnlearningSpec
from fused.common.ml.models import default_model_for
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation


def spec_for(exp: Experiment, base: str, override: dict[str, Any]) -> UnlearningSpec:
    method = override.get("method", "fused")
    fields = {k: v for k, v in override.items() if k in ("top_k", "density", "selection")}
    if "layers" in override:
        fields["layers"] = tuple(override["layers"])
    config = METHOD_CONFIGS[method](**fields)
    train = dataclasses.replace(exp.train, lr=override["lr"]) if "lr" in override else None
    return UnlearningSpec(
        forget=exp.forget(),
        base_version=base,
        rounds=override.get("rounds", exp.budget.unlearn_rounds),
        stop_patience=override.get("stop_patience", 0),  # the curve of every round
        train=train,
        config=config,
        min_participants=exp.participants - 1,
        round_deadline_s=900,
        seed=exp.seed,
        evaluate_each_round=True,
    )


def trained_base(fed: LocalFederation, exp: Experiment) -> str:
    """The original model: the one an earlier sweep in this work folder trained, if any."""
    reply = fed.control().ListModels(control_pb2.ListModelsRequest())
    for info in reply.models:
        if info.kind == "base" and not info.parent_id:
            return str(info.version_id)
    trained = run_job(fed, start_training(fed.control(), training_spec(exp)))
    return str(json.loads(trained.result_json)["version_id"])


def run(exp: Experiment, configs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = partition(exp)
    sets = build_sets(exp.work / "shards", exp.paradigm)
    model = default_model_for(summary["dataset"])
    results: dict[str, Any] = {}
    with LocalFederation(exp.work / "processes") as fed:
        fed.start_coordinator()
        for pid in summary["participant_ids"]:
            fed.start_participant(exp.work / "shards" / pid)
        fed.wait_online(exp.participants, timeout_s=300)
        base = trained_base(fed, exp)
        data = export(fed, base)
        weights, _ = decode_tensors(data)
        original = evaluate_weights(model, weights, sets, exp.train, exp.budget.relearn_epochs)
        sha = hashlib.sha256(data).hexdigest()
        for override in configs:
            name = override["name"]
            method = override.get("method", "fused")
            unlearn = spec_for(exp, base, override)
            out = run_method(fed, exp, method, unlearn, sets, model, sha)
            results[name] = {"override": override, **out}
            print(json.dumps({name: {k: out[k] for k in ("ra", "fa", "mia_auc", "seconds")}}))
    return {"original": original, "configs": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paradigm", required=True, choices=["client", "class", "sample"])
    parser.add_argument("--configs", type=Path, required=True, help="JSON list of overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backdoor-count", type=int, default=1000)
    parser.add_argument("--trigger-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    exp = Experiment(
        dataset="fashionmnist",
        paradigm=args.paradigm,
        participants=10,
        budget=FULL,
        lr=0.005,
        batch_size=64,
        top_k=2,
        density=0.05,
        selection="cli",
        unlearn_lr=None,
        trigger_size=args.trigger_size,
        backdoor_count=args.backdoor_count,
        seed=args.seed,
        data_dir=None,
        work=Path("runs") / f"sweep-{args.paradigm}-seed{args.seed}",
        out=args.out,
    )
    results = run(exp, json.loads(args.configs.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"sweep-fashionmnist-{args.paradigm}-seed{args.seed}-{args.configs.stem}.json"
    path = args.out / name
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
