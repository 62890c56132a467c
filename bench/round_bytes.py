"""Bytes per participant per round of a real federation on loopback (the processes of
tools/launch.py): FedAvg training vs FUSED unlearning, from the job accounting and the
coordinator's Prometheus counters. Model weights and images are random: byte counts depend on
shapes, not on values."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fused.client.initial_weights import start_training
from fused.common.codecs.adapter_codec import (
    FORMAT,
    MAGIC,
    VALUE_DTYPES,
    decode_adapter,
    encode_adapter,
)
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import AdapterLayout, build_layout
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import write_partition
from fused.common.ml.data.sources import SourceData
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.models import init_model
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape

PARTICIPANTS = 2


@dataclass(frozen=True)
class ModelCase:
    name: str  # registry name
    dataset: str  # data set name whose default model it is
    shape: tuple[int, int, int]


CASES = (
    ModelCase("lenet", "fashionmnist", (1, 28, 28)),
    ModelCase("resnet18", "cifar10", (3, 32, 32)),
)


def synthetic_shards(case: ModelCase, out: Path, per_participant: int) -> None:
    """Random images of the model's input shape, partitioned like real data."""
    gen = torch.Generator().manual_seed(0)
    n = per_participant * PARTICIPANTS * 2

    def split(count: int, offset: int) -> TensorData:
        x = torch.randint(0, 256, (count, *case.shape), generator=gen, dtype=torch.uint8)
        y = torch.arange(count) % 10
        return TensorData(
            x=x, y=y, y_true=y.clone(), ids=torch.arange(count) + offset, scale=1 / 255
        )

    source = SourceData(case.dataset, 10, split(n, 0), split(64, n), 255)
    config = PartitionConfig(num_participants=PARTICIPANTS, alpha=100.0, min_train_size=8)
    write_partition(out, source, partition_source(source, config), config)


def phase_bytes(port: int) -> dict[tuple[str, str], float]:
    """{(phase, participant): serialized bytes both directions} from the coordinator's
    per-participant counters (--per-participant-metrics)."""
    totals: dict[tuple[str, str], float] = {}
    for (name, labels), value in scrape(port, path=PARTICIPANTS_PATH).items():
        if name == "fused_participant_wire_bytes_total":
            label = dict(labels)
            key = (label["phase"], label["participant"])
            totals[key] = totals.get(key, 0.0) + value
    return totals


def run_job(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    stub = fed.control()
    list(stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id)))
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    if info.status != "completed":
        raise RuntimeError(f"{info.kind} job failed: {info.reason}")
    return info


def per_round(info: control_pb2.JobInfo, phase: str) -> list[float]:
    """Mean bytes per participant, both directions, of each round of a phase."""
    out = []
    for r in info.rounds:
        if r.phase == phase:
            moved = json.loads(r.metrics_json)["bytes"]
            pids = r.participants
            out.append(sum(moved["up"][p] + moved["down"][p] for p in pids) / len(pids))
    return out


def adapter_layout(result: dict[str, Any]) -> AdapterLayout:
    shapes = {
        n: tuple(p.shape)
        for n, p in init_model(result["model"], 10, 0).named_parameters()
        if n in result["layers"]
    }
    return build_layout(shapes, result["density"], result["mask_seed"])


def nonzero(values: dict[str, torch.Tensor]) -> int:
    return sum(int((v != 0).sum()) for v in values.values())


def adapter_blobs(work: Path, job: control_pb2.JobInfo) -> tuple[bytes, list[bytes]]:
    """The job's final aggregate and every participant's upload of its adapter rounds, read
    from the coordinator's artifacts (kept: --keep-artifacts)."""
    store = work / "processes" / "state" / "artifacts" / "sha256"
    aggregates = {json.loads(r.metrics_json).get("values", "") for r in job.rounds}
    final = json.loads(job.result_json)["adapter_digest"]
    uploads = []
    for path in sorted(store.glob("*/*")):
        data = path.read_bytes()
        if data.startswith(MAGIC) and path.name not in aggregates:
            uploads.append(data)
    return (store / final[:2] / final).read_bytes(), uploads


def adapter_figures(work: Path, job: control_pb2.JobInfo, result: dict[str, Any]) -> dict[str, Any]:
    """Adapter bytes against the nonzero values they carry (float32 uploads, 4 B a value)."""
    layout = adapter_layout(result)
    final, uploads = adapter_blobs(work, job)
    decoded = [decode_adapter(u, layout) for u in uploads]
    values_bytes = [4 * nonzero(v) for v in decoded]
    up = sum(
        sum(json.loads(r.metrics_json)["bytes"]["up"].values())
        for r in job.rounds
        if r.phase == "adapter"
    )
    by_dtype = {}
    for name, dtype in VALUE_DTYPES.items():
        sizes = [len(encode_adapter(layout, v, dtype=name)) for v in decoded]
        cast = [nonzero({n: t.to(dtype) for n, t in v.items()}) * dtype.itemsize for v in decoded]
        by_dtype[name] = sum(sizes) / sum(cast)
    return {
        "format": FORMAT,
        "uploads": len(uploads),
        "upload_bytes_mean": sum(map(len, uploads)) / len(uploads),
        "upload_nonzero_values_mean": sum(values_bytes) / 4 / len(uploads),
        "upload_ratio": sum(map(len, uploads)) / sum(values_bytes),
        "upload_ratio_max": max(len(u) / b for u, b in zip(uploads, values_bytes, strict=True)),
        "upload_ratio_by_dtype": by_dtype,
        "adapter_up_ratio": up / sum(values_bytes),
        "nonzero_values": nonzero(decode_adapter(final, layout)),
    }


def measure_model(case: ModelCase, work: Path, rounds: int) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)  # a fresh coordinator: nothing deduplicated
    synthetic_shards(case, work / "shards", per_participant=32)
    dense = len(encode_tensors(init_model(case.name, 10, 0).state_dict()))
    train = TrainConfig(local_epochs=1, lr=0.01, batch_size=32)
    with LocalFederation(work / "processes") as fed:
        fed.start_coordinator("--per-participant-metrics", "--keep-artifacts")
        for i in range(PARTICIPANTS):
            fed.start_participant(work / "shards" / f"p{i}")
        fed.wait_online(PARTICIPANTS)
        stub = fed.control()
        before = phase_bytes(fed.metrics_port)
        spec = TrainingSpec(
            rounds=rounds,
            train=train,
            min_participants=PARTICIPANTS,
            evaluate_each_round=False,
            round_deadline_s=900,
        )
        trained = run_job(
            fed,
            start_training(stub, spec),
        )
        after = phase_bytes(fed.metrics_port)
        prom_train = (
            sum(
                after.get(("train", f"p{i}"), 0) - before.get(("train", f"p{i}"), 0)
                for i in range(PARTICIPANTS)
            )
            / PARTICIPANTS
            / rounds
        )
        unlearn = UnlearningSpec(
            forget=ForgetSpec("class", class_label=0),
            rounds=rounds + 1,
            train=train,
            config=FusedConfig(top_k=2, density=0.05),
            min_participants=PARTICIPANTS,
            evaluate_each_round=False,
            round_deadline_s=900,
        )
        fused = run_job(
            fed,
            stub.StartUnlearning(
                control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(unlearn))
            ),
        )
        final = phase_bytes(fed.metrics_port)
        last_uploads = upload_bytes(fused, rounds + 1)
    fedavg = per_round(trained, "train")
    adapter = per_round(fused, "adapter")
    result = json.loads(fused.result_json)
    result["model"] = case.name
    result["layers"] = result["critical_layers"]
    values = result["adapter_params"]
    figures = adapter_figures(work, fused, result)
    return {
        "dense_bytes": dense,
        "fedavg_round_bytes": sum(fedavg) / len(fedavg),
        "fedavg_round_bytes_prometheus": prom_train,
        "fused_round_bytes_first": adapter[0],
        "fused_round_bytes_later": sum(adapter[1:]) / len(adapter[1:]),
        "reduction": (sum(fedavg) / len(fedavg)) / (sum(adapter[1:]) / len(adapter[1:])),
        "adapter_values": values,
        "adapted_tensors": result["critical_layers"],
        "nonzero_values": figures["nonzero_values"],
        # the last round's bytes up per participant / the final aggregate's nonzero values x 4 B
        "values_overhead_ratio": last_uploads / PARTICIPANTS / (figures["nonzero_values"] * 4),
        "adapter": figures,
        "adapter_bytes_prometheus": sum(
            final.get(("adapter", f"p{i}"), 0) for i in range(PARTICIPANTS)
        )
        / PARTICIPANTS,
    }


def upload_bytes(job: control_pb2.JobInfo, last: int) -> float:
    """UploadBlob bytes the participants sent in the job's last adapter round (job accounting,
    the same counts as the Prometheus counters, split by round)."""
    for r in job.rounds:
        if r.phase == "adapter" and r.round == last:
            moved = json.loads(r.metrics_json)["bytes"]["up"]
            return float(sum(moved.values()))
    raise RuntimeError("no last adapter round")
