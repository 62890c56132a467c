"""Same FedAvg job in FUSED and in Flower: bytes on the wire and seconds per round, side by side.

    python -m bench.flower_compare [--rounds 5] [--participants 4] [--dataset digits]
                                   [--venv .bench-venvs/flwr] [--quick]

Flower (`flwr` from the package registry) is installed into its own virtual environment
(`--venv`), never into the project's, and run through its classic gRPC API
(`flwr.server.start_server` + `flwr.client.start_client`, transport grpc-bidi), which works with
no network access. Both systems run as real processes on 127.0.0.1 with the same model (the
registry default for the data set), the same non-IID shards, the same initial weights, the same
local training code (`fused.participant.executor.local_update`, which the Flower clients import
read-only from this repository), the same per-participant seeds, the same hyper-parameters and
one torch thread per participant; every participant takes part in every round and nothing is
evaluated between rounds. Up to float rounding in the averaging, both train the same model.

Bytes are counted by a transparent TCP proxy on loopback between the participants and the
server of each system, so they are full wire bytes: protobuf messages plus gRPC and HTTP/2
framing, headers, pings and window updates, both directions, all participants. They are counted
over the measured rounds: from the end of the warm-up rounds (`--warmup-rounds`, default 1: the
first round pays each process's first-use costs) to the end of the last round's aggregation, so
start-up, registration and FUSED's final evaluation lie outside. Seconds per round are the wall
time of that same window per measured round. FUSED's own Prometheus counters
(`fused_wire_bytes_total`: serialized message bytes) are reported beside them. Accuracy is the
final global model's on the untouched global test split, computed here the same way for both.

The JSON report goes to stdout and to WORK_DIR/report.json; progress goes to stderr and process
logs stay under WORK_DIR. The Flower side (server and clients, run by the Flower
environment's interpreter) is `bench/flower_side.py`, its environment and processes
`bench/flower_env.py`; the report's arithmetic is `bench/flower_report.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.flower_env import (
    REPO_ROOT,
    ensure_flower_venv,
    free_port,
    log,
    spawn,
    stop_process,
    wait_for_port,
)
from bench.flower_report import (
    compare,
    max_abs_diff,
    message_bytes_by_method,
    per_round,
    system_report,
)
from bench.flower_side import CLIENT_ROLE, SERVER_ROLE
from bench.proxy import LOOPBACK, CountingProxy, write_events

if TYPE_CHECKING:
    import torch

    from fused.common.domain.train_config import TrainConfig
    from fused.tools.launch import LocalFederation

DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "flwr"
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "flower-compare"
FLWR_VERSION = "1.42.0"
# The job: the FedAvg settings.
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 32
LOCAL_EPOCHS = 1


# --- shared job settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    dataset: str
    model: str
    num_classes: int
    participants: int
    rounds: int  # measured
    warmup: int  # run before the measured ones, not counted
    seed: int
    shards: Path
    work_dir: Path

    @property
    def rounds_run(self) -> int:
        return self.warmup + self.rounds

    def train_config(self) -> TrainConfig:
        from fused.common.domain.train_config import TrainConfig

        return TrainConfig(
            local_epochs=LOCAL_EPOCHS,
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            batch_size=BATCH_SIZE,
        )

    @property
    def timeout_s(self) -> float:
        return 300.0 + 600.0 * self.rounds_run


def prepare_shards(
    dataset: str, data_dir: Path | None, participants: int, seed: int, out: Path
) -> dict[str, Any]:
    from fused.common.ml.data.partition import partition_to_directory
    from fused.common.ml.data.partition_config import PartitionConfig

    shutil.rmtree(out, ignore_errors=True)
    config = PartitionConfig(num_participants=participants, seed=seed)
    return partition_to_directory(dataset, data_dir, out, config)


def global_accuracy(job: Job, weights: Mapping[str, torch.Tensor]) -> float:
    """Accuracy of a final model on the untouched global test split."""
    from fused.common.ml.data.shards import load_global_test
    from fused.common.ml.workloads import workload_for
    from fused.participant.executor import load_model
    from fused.participant.training import evaluate

    model = load_model(workload_for(job.model, job.num_classes), weights)
    return evaluate(model, load_global_test(job.shards), job.num_classes).accuracy


# --- FUSED -------------------------------------------------------------------------------------


def _follow(fed: LocalFederation, job_id: str, timeout_s: float) -> Any:
    from fused.proto.v1 import control_pb2

    stub = fed.control()
    for event in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=timeout_s):
        if event.kind in {"job_completed", "job_failed"}:
            break
    return stub.GetJob(control_pb2.GetJobRequest(job_id=job_id), timeout=30)


def run_fused(job: Job) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from fused.client.initial_weights import start_training
    from fused.common.codecs.tensor_codec import decode_tensors
    from fused.common.domain.specs import TrainingSpec
    from fused.proto.v1 import control_pb2, participant_pb2
    from fused.tools.launch import LocalFederation, scrape

    work = job.work_dir / "fused"
    shutil.rmtree(work, ignore_errors=True)
    spec = TrainingSpec(
        model=job.model,
        rounds=job.rounds_run,
        train=job.train_config(),
        participants_per_round=0,
        min_participants=job.participants,
        round_deadline_s=job.timeout_s,
        seed=job.seed,
        evaluate_each_round=False,
    )
    with LocalFederation(work) as fed:
        fed.start_coordinator()
        with CountingProxy(fed.port) as proxy:
            agents = LocalFederation(work)  # participants reach the coordinator via the proxy
            agents.port = proxy.port
            try:
                for i in range(job.participants):
                    agents.start_participant(job.shards / f"p{i}")
                fed.wait_online(job.participants)
                before = scrape(fed.metrics_port)
                log(f"FUSED: {job.participants} participants online; training")
                started = start_training(fed.control(), spec)
                info = _follow(fed, started.job_id, job.timeout_s)
                if info.status != "completed":
                    raise RuntimeError(f"FUSED job {info.job_id} {info.status}: {info.reason}")
                rounds = sorted(
                    (r for r in info.rounds if r.phase == "train"), key=lambda r: r.round
                )
                if len(rounds) != job.rounds_run:
                    raise RuntimeError(f"FUSED ran {len(rounds)} rounds, not {job.rounds_run}")
                started_at = [r.started_at for r in rounds]
                finished_at = [r.finished_at for r in rounds]
                after = scrape(fed.metrics_port)
                result = json.loads(info.result_json)
                chunks = fed.control().ExportModel(
                    control_pb2.ExportModelRequest(version_id=result["version_id"]), timeout=60
                )
                blob = b"".join(c.data for c in chunks)
            finally:
                agents.stop()
            events = proxy.events()
            connections = proxy.connections
    write_events(work / "wire_events.csv", events)
    weights, _ = decode_tensors(blob)
    accuracy = global_accuracy(job, weights)
    report = system_report(events, started_at, finished_at, job.warmup, accuracy)
    service = participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"]
    methods = frozenset(m.name for m in service.methods)  # not the control service's
    train = message_bytes_by_method(before, after, methods, frozenset({"train"}))
    by_method = message_bytes_by_method(before, after, methods, frozenset({"train", "none"}))
    report.update(
        {
            # Counters cannot be cut at round boundaries: these average over every round run.
            "message_bytes_per_round": per_round(sum(train.values()), job.rounds_run),
            "message_bytes_by_method_per_round": {
                method: per_round(n, job.rounds_run) for method, n in by_method.items()
            },
            "federated_accuracy": result["accuracy"],
            "model_payload_bytes": len(blob),
            "connections": connections,
        }
    )
    return report, weights


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
        *("--rounds", str(job.rounds_run), "--seed", str(job.seed), *model_args),
        *("--result", str(result_path), "--weights", str(weights_path)),
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
    report = system_report(events, started_at, finished_at, job.warmup, accuracy)
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
    """Apply --quick (2 measured rounds on digits) and check the numbers."""
    if args.quick:
        args.rounds, args.dataset = 2, "digits"
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    if args.warmup_rounds < 0:
        raise SystemExit(f"--warmup-rounds must be >= 0, got {args.warmup_rounds}")
    if args.participants < 1:
        raise SystemExit(f"--participants must be >= 1, got {args.participants}")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flower_compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="rounds run first and not measured (each process's first-use costs)",
    )
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--dataset", choices=("digits", "fashionmnist"), default="digits")
    parser.add_argument("--data-dir", type=Path, default=None, help="FashionMNIST files")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Flower's own venv")
    parser.add_argument("--flwr-version", default=FLWR_VERSION)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 measured rounds on digits")
    return resolve_settings(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    from fused.common.ml.models import count_parameters, default_model_for, init_model

    python = ensure_flower_venv(args.venv.absolute(), args.flwr_version)
    work: Path = args.work_dir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    summary = prepare_shards(
        args.dataset, args.data_dir, args.participants, args.seed, work / "shards"
    )
    model = default_model_for(args.dataset)
    job = Job(
        dataset=args.dataset,
        model=model,
        num_classes=int(summary["num_classes"]),
        participants=args.participants,
        rounds=args.rounds,
        warmup=args.warmup_rounds,
        seed=args.seed,
        shards=work / "shards",
        work_dir=work,
    )
    fused, fused_weights = run_fused(job)
    flower, flower_weights = run_flower(job, python)
    params = count_parameters(init_model(model, job.num_classes, 0))
    report: dict[str, Any] = {
        "fused": fused,
        "flower": flower,
        **compare(fused, flower),
        "final_weights_max_abs_diff": max_abs_diff(fused_weights, flower_weights),
        "config": {
            "dataset": args.dataset,
            "model": model,
            "parameters": params,
            "float32_model_bytes": 4 * params,
            "participants": args.participants,
            "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds,
            "rounds_run": job.rounds_run,
            "train_sizes": [p["train_size"] for p in summary["participants"]],
            "train": dataclasses.asdict(job.train_config()),
            "seed": args.seed,
            "flwr_version": flower["version"],
            "flower_api": "flwr.server.start_server + flwr.client.start_client (grpc-bidi)",
            "bytes": "TCP bytes through a loopback proxy (gRPC + HTTP/2 framing included), "
            "both directions, all participants, from the end of the warm-up rounds to the "
            "end of the last aggregation, per measured round",
            "seconds": "wall time of the same window per measured round",
            "message_bytes": "FUSED's fused_wire_bytes_total (serialized protobuf messages), "
            "averaged over every round run",
            "accuracy": "final global model (after rounds_run rounds) on the global test split",
            "cpus": os.cpu_count(),
        },
    }
    text = json.dumps(report, indent=2)
    (work / "report.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
