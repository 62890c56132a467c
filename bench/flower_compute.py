"""Pure local compute of one round of `bench.flower_compare`'s job: each participant's local
epoch, timed in one process with no RPC, no server and no other participant running.

    python -m bench.flower_compute --shards DIR --model lenet --num-classes 10 \
        --participants 4 --seed 0 --train '{"lr": 0.05, ...}' [--repeats 2]

Each participant's epoch is the call both systems make in a round
(`fused.participant.executor.local_update` from the initial weights, with the round-1 task
seed), on one torch thread as each participant runs, after a warm-up step (a fresh process's
first step is timed in the report's first-round extra, not here). Each is timed `--repeats`
times and the fastest kept: the least disturbed by whatever else the machine runs. Prints
JSON {"epoch_seconds": [one per participant, in shard order]}; what a round's compute is
made of them is `bench.flower_report.round_compute`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.flower_env import REPO_ROOT
from bench.flower_job import Job


def epoch_seconds(job: Job, repeats: int) -> list[float]:
    """Each participant's local epoch timed in a fresh child process (one torch thread)."""
    args = [
        *(sys.executable, "-m", "bench.flower_compute", "--shards", str(job.shards)),
        *("--model", job.model, "--num-classes", str(job.num_classes)),
        *("--participants", str(job.participants), "--seed", str(job.seed)),
        *("--train", json.dumps(dataclasses.asdict(job.train_config())), "--repeats", str(repeats)),
    ]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"compute timing failed ({done.returncode}): {done.stderr[-2000:]}")
    seconds: list[float] = json.loads(done.stdout)["epoch_seconds"]
    return seconds


def _time_participants(args: argparse.Namespace) -> list[float]:
    import torch

    from fused.common.domain.train_config import TrainConfig, task_seed
    from fused.common.ml.data.shards import load_shard
    from fused.common.ml.models import init_model
    from fused.participant.executor import local_update
    from fused.participant.site import shard_site
    from fused.participant.warmup import warm_up

    torch.set_num_threads(1)  # as each participant runs, agent or Flower client
    weights = init_model(args.model, args.num_classes, args.seed).state_dict()
    base = TrainConfig(**json.loads(args.train))
    fastest: list[float] = []
    for i in range(args.participants):
        site = shard_site(load_shard(Path(args.shards) / f"p{i}"))
        warm_up(site)
        cfg = dataclasses.replace(base, seed=task_seed(args.seed, 1, site.participant_id))
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            local_update(site, weights, cfg)
            times.append(time.perf_counter() - started)
        fastest.append(min(times))
    return fastest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flower_compute")
    for name in ("--shards", "--model", "--train"):
        parser.add_argument(name, required=True)
    for name in ("--num-classes", "--participants", "--seed"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.participants < 1:
        raise SystemExit("--repeats and --participants must be >= 1")
    print(json.dumps({"epoch_seconds": _time_participants(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
