"""Three unlearning requests in sequence, through the forget ledger.

    python -m experiments.ledger_sequence [--seeds 0 1 2] [--quick] [--out results]

Per seed: partition FashionMNIST (Dirichlet alpha=1.0, a 128-sample backdoor in p0), start a
coordinator and one process per participant on loopback, train a LeNet base by FedAvg, then
apply R1 = participant p3, R2 = class 5, R3 = p0's backdoor samples (relabelled; FA is the
attack success rate) with FUSED, in two ways:

- stack: R1 from the base, R2 from R1's version, R3 from R2's version (each adapter on the
  frozen merged weights of the one before; every later job leaves the ledger's data out);
- union: the ledger withdrawn and the base served again; R1, R2 and R3 each from the base,
  so each adapter is trained on the data without every request so far.

Every version (and the base) is evaluated by federated evaluation jobs under each request's
forget spec (RA and FA of R1, R2, R3), once the ledger holds all three requests, so RA is
always counted on the same test data. After the stack chain the served version is switched
back to R2, R1 and the base, and the SHA-256 of ExportModel() is compared with the one
recorded right after each version was produced. Writes results/ledger_sequence.json
(--quick: results/ledger_sequence_quick.json, so a smoke run never replaces the real one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.job_records import run_job
from experiments.ledger_sequence_jobs import (
    Produced,
    active_id,
    evaluate_all,
    ledger,
    produced,
    reapply,
    restart_participants,
    revert,
    sha256_of,
    unlearn,
)
from experiments.ledger_sequence_summary import VERSIONS, render, summarize
from experiments.seeds import git_commit
from fused.client.initial_weights import start_training
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.sources import DEFAULT_FASHION_MNIST_DIRS
from fused.common.ml.models import default_model_for
from fused.tools.launch import LocalFederation

FORGOTTEN_PARTICIPANT = "p3"
FORGOTTEN_CLASS = 5
BACKDOOR_HOLDER = "p0"
BACKDOOR_TARGET = 0


@dataclass(frozen=True)
class Setup:
    """One configuration for every seed, strategy and request."""

    dataset: str
    participants: int
    train_rounds: int
    local_epochs: int
    unlearn_rounds: int
    lr: float
    unlearn_lr: float
    batch_size: int
    top_k: int
    density: float
    trigger_size: int
    backdoor_count: int
    seeds: tuple[int, ...]
    data_dir: Path | None
    work: Path
    out: Path
    name: str  # of the JSON file in `out`

    def train(self, seed: int) -> TrainConfig:
        return TrainConfig(self.local_epochs, self.lr, 0.9, 5e-4, self.batch_size, seed)

    def partition(self, seed: int) -> PartitionConfig:
        return PartitionConfig(
            num_participants=self.participants,
            alpha=1.0,
            seed=seed,
            attacker=None,
            backdoor_participant=0,
            backdoor_count=self.backdoor_count,
            backdoor_target=BACKDOOR_TARGET,
            trigger_size=self.trigger_size,
        )

    def unlearning(self, seed: int, forget: ForgetSpec, base: str) -> UnlearningSpec:
        return UnlearningSpec(
            forget=forget,
            config=FusedConfig(top_k=self.top_k, density=self.density),
            base_version=base,
            rounds=self.unlearn_rounds,
            train=dataclasses.replace(self.train(seed), lr=self.unlearn_lr),
            min_participants=self.participants - 1,  # R1's participant takes no part
            round_deadline_s=900,
            seed=seed,
            evaluate_each_round=False,
        )


def requests_of(shards: Path, setup: Setup) -> dict[str, ForgetSpec]:
    """R1, R2, R3 in the order they arrive. R3 is paper.py's sample paradigm."""
    shard = json.loads((shards / BACKDOOR_HOLDER / "shard.json").read_text())
    return {
        "R1": ForgetSpec("participant", participant_id=FORGOTTEN_PARTICIPANT),
        "R2": ForgetSpec("class", class_label=FORGOTTEN_CLASS),
        "R3": ForgetSpec(
            "samples",
            participant_id=BACKDOOR_HOLDER,
            sample_ids=tuple(shard["backdoor_ids"]),
            relabel=True,
            trigger_size=setup.trigger_size,
            trigger_target=BACKDOOR_TARGET,
        ),
    }


def train_base(fed: LocalFederation, setup: Setup, seed: int) -> Produced:
    spec = TrainingSpec(
        rounds=setup.train_rounds,
        train=setup.train(seed),
        min_participants=setup.participants,
        round_deadline_s=900,
        seed=seed,
        evaluate_each_round=False,
    )
    print(f"[seed {seed}] FedAvg: {setup.train_rounds} rounds", flush=True)
    return produced(fed, run_job(fed, start_training(fed.control(), spec)), "train")


def run_stack(
    fed: LocalFederation, setup: Setup, seed: int, base: str, requests: dict[str, ForgetSpec]
) -> dict[str, Produced]:
    """Each request from the version the previous one produced."""
    chain: dict[str, Produced] = {}
    previous = base
    for name, forget in requests.items():
        print(f"[seed {seed}] stack {name} from {previous}", flush=True)
        chain[name] = unlearn(fed, setup.unlearning(seed, forget, previous))
        previous = chain[name].version_id
    return chain


def run_union(
    fed: LocalFederation, setup: Setup, seed: int, base: str, requests: dict[str, ForgetSpec]
) -> dict[str, Produced]:
    """Each request from the base: the ledger makes each adapter leave out the earlier ones."""
    done: dict[str, Produced] = {}
    for name, forget in requests.items():
        print(f"[seed {seed}] union {name} from the base {base}", flush=True)
        done[name] = unlearn(fed, setup.unlearning(seed, forget, base))
    return done


def check_exactness(
    fed: LocalFederation, base: Produced, chain: dict[str, Produced]
) -> dict[str, bool]:
    """Step back along the stack chain and compare ExportModel() of the served version with
    the SHA-256 recorded right after it was produced; then forward to R3 again."""
    r1, r2, r3 = (chain[v] for v in VERSIONS)
    checks = {
        "parents": (r1.parent_id, r2.parent_id, r3.parent_id)
        == (base.version_id, r1.version_id, r2.version_id),
        "R3_served_after_chain": active_id(fed) == r3.version_id and sha256_of(fed) == r3.sha256,
    }
    for current, earlier in ((r3, r2), (r2, r1), (r1, base)):
        name = next((k for k, v in chain.items() if v is earlier), "base")
        served = revert(fed, current.version_id)
        same = sha256_of(fed) == earlier.sha256
        checks[f"revert_to_{name}"] = served == earlier.version_id and same
    served = reapply(fed, r3.version_id)
    checks["reapply_R3"] = served == r3.version_id and sha256_of(fed) == r3.sha256
    return checks


def evaluated(
    fed: LocalFederation, versions: dict[str, Produced], requests: dict[str, ForgetSpec]
) -> dict[str, dict[str, Any]]:
    return {
        name: {**v.to_dict(), **evaluate_all(fed, v.version_id, requests)}
        for name, v in versions.items()
    }


@dataclass
class SeedRun:
    """One seed's federation: its shards, the partition's summary and the three requests."""

    fed: LocalFederation
    shards: Path
    partition: dict[str, Any]
    requests: dict[str, ForgetSpec]


@contextmanager
def seed_federation(setup: Setup, seed: int) -> Iterator[SeedRun]:
    """A fresh coordinator state and participants on this seed's partition."""
    work = setup.work / f"seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    summary = partition_to_directory(
        setup.dataset, setup.data_dir, work / "shards", setup.partition(seed)
    )
    with LocalFederation(work / "processes") as fed:
        fed.start_coordinator()
        for pid in summary["participant_ids"]:
            fed.start_participant(work / "shards" / pid)
        fed.wait_online(setup.participants, timeout_s=600)
        yield SeedRun(fed, work / "shards", summary, requests_of(work / "shards", setup))


def fedavg_record(base: Produced) -> dict[str, Any]:
    return {
        "version_id": base.version_id,
        "sha256": base.sha256,
        "seconds": base.seconds,
        "bytes_per_round": base.bytes_per_round,
    }


def run_seed(setup: Setup, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    with seed_federation(setup, seed) as run:
        fed, requests, summary = run.fed, run.requests, run.partition
        base = train_base(fed, setup, seed)
        stack = run_stack(fed, setup, seed, base.version_id, requests)
        exactness = check_exactness(fed, base, stack)
        # The ledger holds R1..R3 now: every RA below is counted on the same test data.
        base_figures = {**base.to_dict(), **evaluate_all(fed, base.version_id, requests)}
        stack_figures = evaluated(fed, stack, requests)
        ledger_after_stack = ledger(fed)
        withdrawn = fed.withdraw_all()  # marks only; the served version stays
        served = reapply(fed, base.version_id)  # the control service's "set active"
        exactness["base_served_for_union"] = served == base.version_id and (
            sha256_of(fed) == base.sha256
        )
        restart_participants(fed, run.shards)  # no artifact cached by the stack's jobs
        union = run_union(fed, setup, seed, base.version_id, requests)
        union_figures = evaluated(fed, union, requests)
        ledger_after_union = ledger(fed)
    # The same job on the same base with the same (empty) ledger: bit for bit the same model.
    exactness["union_R1_is_stack_R1"] = union["R1"].sha256 == stack["R1"].sha256
    return {
        "seed": seed,
        "participant_sizes": {p["id"]: p["train_size"] for p in summary["participants"]},
        "backdoor_samples": len(requests["R3"].sample_ids),
        "fedavg": fedavg_record(base),
        "base": base_figures,
        "strategies": {"stack": stack_figures, "union": union_figures},
        "exactness": exactness,
        "ledger": {
            "after_stack": ledger_after_stack,
            "withdrawn_before_union": withdrawn,
            "after_union": ledger_after_union,
        },
        "wall_seconds": time.monotonic() - started,
    }


def data_dir_used(setup: Setup) -> Path | str:
    """Where the data came from: the directory given, or the first complete one of
    `load_source`'s search path (Debian's dataset-fashion-mnist: /usr/share/datasets/...)."""
    if setup.dataset == "digits":
        return "(bundled with scikit-learn)"
    stem = "train-images-idx3-ubyte"
    found = (d for d in DEFAULT_FASHION_MNIST_DIRS if any(d.glob(stem + "*")))
    return setup.data_dir or next(found, "(not found)")


def run(setup: Setup) -> dict[str, Any]:
    started = time.monotonic()
    seeds = {str(seed): run_seed(setup, seed) for seed in setup.seeds}
    config = {
        **{
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(setup).items()
            if k not in ("work", "out", "data_dir", "name")
        },
        "data_dir": str(data_dir_used(setup)),
        "model": default_model_for(setup.dataset),
        "alpha": 1.0,
        "requests": {
            "R1": f"participant {FORGOTTEN_PARTICIPANT}",
            "R2": f"class {FORGOTTEN_CLASS}",
            "R3": f"{setup.backdoor_count} backdoor samples of {BACKDOOR_HOLDER}, relabelled; "
            f"FA = attack success rate (trigger {setup.trigger_size}, target {BACKDOOR_TARGET})",
        },
        "ra": "federated evaluation jobs on the participants' test splits, once the ledger "
        "holds R1..R3 (without p3's test data and without class 5)",
        "method": "fused",
        "union_cold_caches": "every participant process is restarted before the union "
        "strategy, so no artifact the stack's jobs cached makes its bytes smaller",
        "torch": torch.__version__,
        "commit": git_commit(),
    }
    return {
        "config": config,
        "seeds": seeds,
        "summary": summarize(seeds),
        "wall_seconds": time.monotonic() - started,
    }


def parse(argv: Sequence[str] | None) -> Setup:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="fashionmnist", choices=["fashionmnist", "digits"])
    parser.add_argument("--quick", action="store_true", help="tiny budget, seed 0, 4 participants")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    parser.add_argument("--participants", type=int, default=None, help="default: 10 (4 quick)")
    parser.add_argument("--train-rounds", type=int, default=None, help="default: 30 (1 quick)")
    parser.add_argument("--local-epochs", type=int, default=None, help="default: 2 (1 quick)")
    parser.add_argument("--unlearn-rounds", type=int, default=None, help="default: 5 (1 quick)")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.005 (0.05 digits)")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="default: --lr")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--trigger-size", type=int, default=3)
    parser.add_argument("--backdoor-count", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--work", type=Path, default=None, help="default: runs/ledger-sequence")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    participants = args.participants or (4 if quick else 10)
    if participants <= int(FORGOTTEN_PARTICIPANT[1:]):
        parser.error(f"R1 forgets {FORGOTTEN_PARTICIPANT}: give at least 4 participants")
    lr = args.lr if args.lr is not None else (0.005 if args.dataset == "fashionmnist" else 0.05)
    return Setup(
        dataset=args.dataset,
        participants=participants,
        train_rounds=args.train_rounds or (1 if quick else 30),
        local_epochs=args.local_epochs or (1 if quick else 2),
        unlearn_rounds=args.unlearn_rounds or (1 if quick else 5),
        lr=lr,
        unlearn_lr=args.unlearn_lr if args.unlearn_lr is not None else lr,
        batch_size=args.batch_size,
        top_k=args.top_k,
        density=args.density,
        trigger_size=args.trigger_size,
        backdoor_count=args.backdoor_count,
        seeds=tuple(args.seeds or ([0] if quick else [0, 1, 2])),
        data_dir=args.data_dir,
        work=args.work or Path("runs") / ("ledger-sequence-quick" if quick else "ledger-sequence"),
        out=args.out,
        name="ledger_sequence_quick" if quick else "ledger_sequence",
    )


def main(argv: Sequence[str] | None = None) -> int:
    setup = parse(argv)
    results = run(setup)
    setup.out.mkdir(parents=True, exist_ok=True)
    path = setup.out / f"{setup.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(render(results["summary"]))
    print(f"wrote {path} in {results['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
