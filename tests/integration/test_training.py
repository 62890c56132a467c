"""A short federated training job through real processes, checked from every side."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections import defaultdict
from pathlib import Path

import torch

from fused.client.initial_weights import start_training
from fused.common.codecs.tensor_codec import decode_tensors
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig, task_seed
from fused.common.ml.data.shards import load_shard
from fused.common.ml.fedavg import fedavg
from fused.common.ml.models import init_model
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.participant.executor import local_update
from fused.participant.site import shard_site
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape
from tests.integration.conftest import NUM_PARTICIPANTS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
WIRE = "fused_wire_bytes_total"
PER_PARTICIPANT = "fused_participant_wire_bytes_total"
BY_PARTICIPANT = ("participant", "phase", "direction")

SPEC = TrainingSpec(
    rounds=3,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=NUM_PARTICIPANTS,
    round_deadline_s=60,
    seed=7,
    evaluate_each_round=False,
)


def run_job(fed: LocalFederation, spec: TrainingSpec) -> control_pb2.JobInfo:
    stub = fed.control()
    job = start_training(stub, spec)
    events = list(stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert events[-1].kind in {"job_completed", "job_failed"}
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    return info


def export(fed: LocalFederation, version_id: str) -> tuple[bytes, str]:
    chunks = list(fed.control().ExportModel(control_pb2.ExportModelRequest(version_id=version_id)))
    return b"".join(c.data for c in chunks), chunks[0].blob_id


def in_process_fedavg(shards: Path, spec: TrainingSpec) -> dict[str, torch.Tensor]:
    """The same job without any RPC: same shards, seeds, selection and arithmetic."""
    local = [load_shard(shards / f"p{i}") for i in range(NUM_PARTICIPANTS)]
    weights = init_model("mlp", 10, spec.seed).state_dict()
    for r in range(1, spec.rounds + 1):
        updates = []
        for shard in sorted(local, key=lambda s: s.meta.participant_id):
            pid = shard.meta.participant_id
            cfg = dataclasses.replace(spec.train, seed=task_seed(spec.seed, r, pid))
            state, stats = local_update(shard_site(shard), weights, cfg)
            updates.append((state, stats.num_examples))
        weights = fedavg(updates)
    return weights


def test_job_completes_and_records_everything(federation: LocalFederation) -> None:
    info = run_job(federation, SPEC)
    assert info.status == "completed", info.reason
    result = json.loads(info.result_json)
    assert 0.0 < result["accuracy"] <= 1.0
    train_rounds = [r for r in info.rounds if r.phase == "train"]
    assert [r.round for r in train_rounds] == [1, 2, 3]
    for r in train_rounds:
        assert sorted(r.participants) == ["p0", "p1", "p2"]
        assert json.loads(r.metrics_json)["bytes"]["total"] > 0
    models = federation.control().ListModels(control_pb2.ListModelsRequest()).models
    version = next(m for m in models if m.version_id == result["version_id"])
    assert version.active and version.job_id == info.job_id
    data, digest = export(federation, version.version_id)
    assert hashlib.sha256(data).hexdigest() == digest == version.digest


def test_fedavg_over_grpc_equals_in_process(
    federation: LocalFederation, digits_shards: Path
) -> None:
    info = run_job(federation, SPEC)
    assert info.status == "completed", info.reason
    data, _ = export(federation, json.loads(info.result_json)["version_id"])
    remote, _ = decode_tensors(data)
    local = in_process_fedavg(digits_shards, SPEC)
    assert remote.keys() == local.keys()
    for name in local:
        torch.testing.assert_close(remote[name], local[name], rtol=1e-5, atol=1e-6)


def wire_sums(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The counter `name` of a scrape, summed by the labels `keys`."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            found = dict(labels)
            out[tuple(found[k] for k in keys)] += value
    return dict(out)


def test_byte_counters_agree_on_both_ends(federation: LocalFederation) -> None:
    """Every message a participant sent was received by the coordinator, and vice versa: per
    method and phase, all agents against the coordinator's totals (/metrics), and per
    participant and phase against the coordinator's per-participant bytes."""
    run_job(federation, dataclasses.replace(SPEC, rounds=1))
    port, flip = federation.metrics_port, {"sent": "received", "received": "sent"}
    totals = wire_sums(scrape(port), WIRE, "method", "phase", "direction")
    each = wire_sums(scrape(port, path=PARTICIPANTS_PATH), PER_PARTICIPANT, *BY_PARTICIPANT)
    agents: dict[tuple[str, ...], float] = defaultdict(float)
    for name, agent_port in federation.participant_metrics.items():
        own = wire_sums(scrape(agent_port), WIRE, "method", "phase", "direction")
        for (method, phase, direction), value in own.items():
            agents[method, phase, flip[direction]] += value
        for phase, direction in itertools.product(("train", "evaluate"), flip):
            mine = sum(v for (_, p, d), v in own.items() if (p, d) == (phase, direction))
            theirs = each.get((name, phase, flip[direction]), 0.0)
            assert mine == theirs, (name, phase, direction)
        # Protocol 2: an MLP (17k float32 params) travels inline, down with the task and up
        # with the result; the calls charge it to the task's round on both ends.
        assert own["PullTask", "train", "received"] > 60_000
        assert own["PushResult", "train", "sent"] > 60_000
        assert ("UploadBlob", "train", "sent") not in own
    methods = ("PullTask", "DownloadBlob", "UploadBlob", "PushResult")
    for key in itertools.product(methods, ("train", "evaluate"), flip):
        assert agents.get(key, 0.0) == totals.get(key, 0.0), key
