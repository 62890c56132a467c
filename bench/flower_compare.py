"""Same FedAvg job in FUSED and in Flower: bytes on the wire and seconds per round, side by side.

    python -m bench.flower_compare [--model mlp|lenet] [--rounds 5] [--participants 4]
                                   [--venv .bench-venvs/flwr] [--no-agent-warmup] [--quick]

`--model mlp` trains the small MLP on digits (where per-call latency shows), `--model lenet`
LeNet-5 on real FashionMNIST (Debian's dataset-fashion-mnist files, or `--data-dir`). Flower
(`flwr` from the package registry) is installed into its own virtual environment (`--venv`),
never into the project's, and run through its classic gRPC API (`flwr.server.start_server` +
`flwr.client.start_client`, transport grpc-bidi), which works with no network access. Both
systems run as real processes on 127.0.0.1 with the same model, the same non-IID shards, the
same initial weights, the same local training code (`fused.participant.executor.local_update`,
which the Flower clients import read-only from this repository), the same per-participant
seeds, the same hyper-parameters and one torch thread per participant; every participant
takes part in every round and nothing is evaluated between rounds. Up to float rounding in the
averaging, both train the same model.

Bytes are counted by a transparent TCP proxy on loopback between the participants and the
server of each system, so they are full wire bytes: protobuf messages plus gRPC and HTTP/2
framing, headers, pings and window updates, both directions, all participants. They are counted
over the measured rounds: from the end of the warm-up rounds (the first `--warmup-rounds` of
the `--rounds` the job runs, default 1) to the end of the last round's aggregation, so
start-up, registration and FUSED's final evaluation lie outside. Seconds per round are the wall
time of that same window per measured round. The first round's extra cost (its seconds minus
the later rounds' mean) is reported for each system: FUSED's agents take one training step at
start (`participant/warmup.py`; `--no-agent-warmup` starts them without), Flower's clients
do not. Each system's seconds per round are divided by the round's pure local compute: each
participant's epoch timed alone in one process (`bench/flower_compute.py`), combined as
`bench.flower_report.RoundCompute` explains. FUSED's own Prometheus counters
(`fused_wire_bytes_total`: serialized message bytes) are reported beside them. Accuracy is the
final global model's on the untouched global test split, computed here the same way for both.

The JSON report goes to stdout and to WORK_DIR/report.json; progress goes to stderr and process
logs stay under WORK_DIR. The job is `bench/flower_job.py`, the FUSED side
`bench/flower_fused.py`, the Flower side (server and clients, run by the Flower environment's
interpreter) `bench/flower_side.py`, its environment and processes `bench/flower_env.py`; the
report's arithmetic is `bench/flower_report.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.flower_compute import epoch_seconds
from bench.flower_env import (
    REPO_ROOT,
    ensure_flower_venv,
    free_port,
    log,
    spawn,
    stop_process,
    wait_for_port,
)
from bench.flower_fused import run_fused
from bench.flower_job import MODEL_DATASETS, Job, global_accuracy, prepare_shards
from bench.flower_report import (
    RoundCompute,
    compare,
    max_abs_diff,
    median_compute,
    median_report,
    round_compute,
    system_report,
)
from bench.flower_side import AGGREGATIONS, CLIENT_ROLE, SERVER_ROLE
from bench.proxy import LOOPBACK, CountingProxy, write_events

if TYPE_CHECKING:
    import torch

DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "flwr"
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "flower-compare"
FLWR_VERSION = "1.42.0"


# --- Flower (orchestration, in this environment) -----------------------------------------------


def run_flower(job: Job, python: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    work = job.work_dir / "flower"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    result_path, weights_path = work / "server.json", work / "final.safetensors"
    model_args = ["--model", job.model, "--num-classes", str(job.num_classes)]
    train = json.dumps(dataclasses.asdict(job.train_config()))
    server_args = [
        *(str(python), "-m", "bench.flower_side", SERVER_ROLE),
        *("--listen", f"{LOOPBACK}:{port}", "--clients", str(job.participants)),
        *("--rounds", str(job.rounds), "--seed", str(job.seed), *model_args),
        *("--result", str(result_path), "--weights", str(weights_path)),
        *("--aggregation", job.flower_aggregation),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = spawn(server_args, work / "server.log")
        procs.append(server)
        wait_for_port(port, server, 120)
        with CountingProxy(port) as proxy:
            for i in range(job.participants):
                client_args = [
                    *(str(python), "-m", "bench.flower_side", CLIENT_ROLE),
                    *("--server", f"{LOOPBACK}:{proxy.port}", "--shard", str(job.shards / f"p{i}")),
                    *("--train", train, *model_args),
                ]
                procs.append(spawn(client_args, work / f"p{i}.log"))
            log(f"Flower: server and {job.participants} clients started; training")
            if server.wait(job.timeout_s) != 0:
                raise RuntimeError(f"Flower server exited with {server.returncode}")
            for proc in procs[1:]:
                if proc.wait(60) != 0:
                    raise RuntimeError(f"a Flower client exited with {proc.returncode}")
            events = proxy.events()
            connections = proxy.connections
    finally:
        for proc in procs:
            stop_process(proc)
    write_events(work / "wire_events.csv", events)
    result = json.loads(result_path.read_text())
    started_at, finished_at = result["round_started"], result["round_finished"]
    weights = load_file(str(weights_path))
    accuracy = global_accuracy(job, weights)
    report = system_report(events, started_at, finished_at, job.warmup, accuracy, job.participants)
    report.update(
        {
            "version": result["flwr_version"],
            "model_payload_bytes": result["model_payload_bytes"],
            "dtypes": result["dtypes"],
            "connections": connections,
        }
    )
    return report, weights


# --- main --------------------------------------------------------------------------------------


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Apply --quick (3 rounds of the MLP) and check the numbers."""
    if args.quick:
        args.rounds, args.model = 3, "mlp"
    if args.warmup_rounds < 0:
        raise SystemExit(f"--warmup-rounds must be >= 0, got {args.warmup_rounds}")
    if args.rounds - args.warmup_rounds < 1:
        raise SystemExit(f"--rounds {args.rounds} leaves none after the warm-up rounds")
    if args.participants < 1:
        raise SystemExit(f"--participants must be >= 1, got {args.participants}")
    for name in ("compute_repeats", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flower_compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=sorted(MODEL_DATASETS), default="mlp")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the job runs")
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="first rounds left out of bytes and seconds per round (reported on their own)",
    )
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=None, help="FashionMNIST files")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Flower's own venv")
    parser.add_argument("--flwr-version", default=FLWR_VERSION)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compute-repeats", type=int, default=2, help="timings per epoch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="passes (compute, FUSED, Flower; the systems' order alternating); the report "
        "gives each figure's median",
    )
    parser.add_argument(
        "--no-agent-warmup",
        dest="agent_warmup",
        action="store_false",
        help="start FUSED's agents with --skip-warmup (their first step lands in round 1)",
    )
    parser.add_argument(
        "--flower-aggregation",
        choices=AGGREGATIONS,
        default="flwr",
        help="Flower's server averages with its own FedAvg, or with FUSED's exact sum (the "
        "same bits on both sides: a check that both ran the same job)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of the MLP")
    return resolve_settings(parser.parse_args(argv))


def _job(args: argparse.Namespace, work: Path) -> Job:
    dataset = MODEL_DATASETS[args.model]
    summary = prepare_shards(dataset, args.data_dir, args.participants, args.seed, work / "shards")
    return Job(
        dataset=dataset,
        model=args.model,
        num_classes=int(summary["num_classes"]),
        participants=args.participants,
        rounds=args.rounds,
        warmup=args.warmup_rounds,
        seed=args.seed,
        shards=work / "shards",
        work_dir=work,
        agent_warmup=args.agent_warmup,
        flower_aggregation=args.flower_aggregation,
        train_sizes=tuple(int(p["train_size"]) for p in summary["participants"]),
    )


def _config(job: Job, flwr_version: str) -> dict[str, Any]:
    from fused.common.ml.models import count_parameters, init_model

    params = count_parameters(init_model(job.model, job.num_classes, 0))
    return {
        "dataset": job.dataset,
        "model": job.model,
        "parameters": params,
        "float32_model_bytes": 4 * params,
        "participants": job.participants,
        "rounds": job.rounds,
        "warmup_rounds": job.warmup,
        "measured_rounds": job.measured,
        "train_sizes": list(job.train_sizes),
        "train": dataclasses.asdict(job.train_config()),
        "seed": job.seed,
        "agent_warmup": job.agent_warmup,
        "flower_aggregation": job.flower_aggregation,
        "flwr_version": flwr_version,
        "flower_api": "flwr.server.start_server + flwr.client.start_client (grpc-bidi)",
        "bytes": "TCP bytes through a loopback proxy (gRPC + HTTP/2 framing included), "
        "both directions, all participants, from the end of the warm-up rounds to the "
        "end of the last aggregation, per measured round (and per participant)",
        "seconds": "wall time of the same window per measured round",
        "compute": "each participant's local epoch timed alone in one process (one thread, "
        "warmed up, fastest of compute_repeats); a round's compute is max(max, sum / "
        "min(participants, cores)): see bench.flower_report.RoundCompute",
        "first_round_extra": "first round's seconds minus the mean of the later rounds'",
        "message_bytes": "FUSED's fused_wire_bytes_total (serialized protobuf messages), "
        "averaged over every round run",
        "accuracy": "final global model (after all rounds) on the global test split",
        "cpus": os.cpu_count(),
    }


@dataclass(frozen=True)
class Pass:
    """One measurement of each system and of the compute, on the same job."""

    fused: dict[str, Any]
    flower: dict[str, Any]
    compute: RoundCompute
    weights_max_abs_diff: float


def measure(job: Job, python: Path, flower_first: bool, compute_repeats: int) -> Pass:
    """The compute, then both systems; `flower_first` alternates their order between passes,
    so a load that drifts over a run weighs on both alike."""
    log(f"timing each participant's local epoch alone ({compute_repeats} times)")
    compute = round_compute(epoch_seconds(job, compute_repeats), os.cpu_count() or 1)
    if flower_first:
        flower, flower_weights = run_flower(job, python)
        fused, fused_weights = run_fused(job)
    else:
        fused, fused_weights = run_fused(job)
        flower, flower_weights = run_flower(job, python)
    return Pass(fused, flower, compute, max_abs_diff(fused_weights, flower_weights))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = ensure_flower_venv(args.venv.absolute(), args.flwr_version)
    work: Path = args.work_dir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    job = _job(args, work)
    passes = [measure(job, python, i % 2 == 1, args.compute_repeats) for i in range(args.repeats)]
    fused = median_report([p.fused for p in passes])
    flower = median_report([p.flower for p in passes])
    compute = median_compute([p.compute for p in passes])
    report: dict[str, Any] = {
        "fused": fused,
        "flower": flower,
        "compute": {**compute.as_json(), "passes": [p.compute.as_json() for p in passes]},
        **compare(fused, flower, compute.seconds),
        "final_weights_max_abs_diff": max(p.weights_max_abs_diff for p in passes),
        "config": {**_config(job, flower["version"]), "repeats": args.repeats},
    }
    text = json.dumps(report, indent=2)
    (work / "report.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
