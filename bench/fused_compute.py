"""A participant's local compute per round: FUSED adapter rounds against full-model rounds.

    python -m bench.fused_compute [--epochs 1 2] [--repeat 5] [--threads 1]

LeNet-5 on real FashionMNIST (common.ml.data.sources; Debian's dataset-fashion-mnist), dealt
out as the paper runs do (10 participants, Dirichlet alpha 1.0, seed 0); participant p1's shard
runs each round's task through participant.handlers.run_task, the agent's own code, with its
artifacts in memory: decoding, training, encoding and hashing the upload included, no network.
The participant paradigm forgets p0, so p1 trains on all of its data in every method.

Variants, run in turn within each repeat so that they share the machine's load:
  finetune         a full-model round from the base weights
  retrain          a full-model round from fresh initial weights (same cost per epoch)
  fused_fc         an adapter round on fc1.weight, fc2.weight (rho 0.05): `_first` is a job's
                   first round, `_later` a later one (the frozen prefix's outputs are kept)
  fused_default    the default selection's tensors on LeNet for the participant and class
                   paradigms (fc1.bias, fc1.weight, fc3.weight; docs/RESULTS.md)
  fused_sample     the default selection's for the backdoor (conv2, fc1, conv1 weights): the
                   first layer trains, so nothing can be skipped
  evaluate         the evaluation task that follows a full-model round
  *_eval_first, *_eval_later   the evaluation that follows an adapter round (base + adapter)

A FUSED job's rounds run here as they do on an agent: first round, its evaluation, a later
round, its evaluation. Per variant: the median over repeats of process CPU-seconds
(time.process_time, every torch thread of this process) and wall seconds of run_task, and the
stages the outcome reports (where the code records them); each FUSED variant's CPU ratio to
finetune, and a whole round's (training plus its evaluation) ratio. Prints JSON. Run it in a
checkout of an earlier commit (git worktree) for the code before a change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fused.common.codecs.adapter_codec import encode_adapter
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.domain.tasks import AdapterRef, ForgetSpec, TaskKind, TaskSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import build_layout, zero_values
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.sources import load_source
from fused.participant.handlers import run_task
from fused.participant.site import Site, shard_site

try:  # the kept prefix outputs exist from the change this bench measures on
    from fused.participant.prefix import drop_kept
except ImportError:  # an earlier checkout keeps nothing between tasks

    def drop_kept() -> None:
        pass


FC = ("fc1.weight", "fc2.weight")
DEFAULT_CLIENT = ("fc1.bias", "fc1.weight", "fc3.weight")
DEFAULT_SAMPLE = ("conv1.weight", "conv2.weight", "fc1.weight")
DENSITY, MASK_SEED = 0.05, 17
FORGET = ForgetSpec("participant", participant_id="p0")


class MemoryTransport:
    """A task's artifacts in a dict by sha256 (participant.handlers.ArtifactTransport)."""

    max_download_bytes = 1 << 30

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self.blobs[digest] = blob
        return digest

    def fetch(self, digest: str) -> bytes:
        return self.blobs[digest]

    def upload(self, blob: bytes) -> str:
        return self.put(blob)


@dataclass(frozen=True)
class Variant:
    name: str
    kind: TaskKind
    model_blob: str
    adapter: AdapterRef | None = None
    cold: bool = False  # forget kept prefix outputs first: a job's first round


def _adapter(
    site: Site, transport: MemoryTransport, layers: Sequence[str], later: bool
) -> AdapterRef:
    shapes = {n: tuple(p.shape) for n, p in site.workload.make_model().named_parameters()}
    layout = build_layout({n: shapes[n] for n in layers}, DENSITY, MASK_SEED)
    values = {n: v + 0.01 for n, v in zero_values(layout).items()}  # a later round's mean
    blob = transport.put(encode_adapter(layout, values)) if later else ""
    return AdapterRef(tuple(layout.names), DENSITY, MASK_SEED, layout.digest, blob)


def variants(site: Site, transport: MemoryTransport) -> list[Variant]:
    def weights(seed: int) -> str:
        model = site.workload.build_model(seed)
        return transport.put(encode_tensors(model.state_dict(), {"model": site.workload.name}))

    base, fresh = weights(0), weights(1)
    out = [Variant("finetune", TaskKind.TRAIN, base), Variant("retrain", TaskKind.TRAIN, fresh)]
    out.append(Variant("evaluate", TaskKind.EVALUATE, base))
    for name, layers in (("fc", FC), ("default", DEFAULT_CLIENT), ("sample", DEFAULT_SAMPLE)):
        first = _adapter(site, transport, layers, later=False)
        later = _adapter(site, transport, layers, later=True)
        train, evaluate = TaskKind.ADAPTER_TRAIN, TaskKind.EVALUATE
        out.append(Variant(f"fused_{name}_first", train, base, first, cold=True))
        out.append(Variant(f"fused_{name}_eval_first", evaluate, base, later))
        out.append(Variant(f"fused_{name}_later", train, base, later))
        out.append(Variant(f"fused_{name}_eval_later", evaluate, base, later))
    return out


def run_once(
    site: Site, transport: MemoryTransport, v: Variant, cfg: TrainConfig
) -> dict[str, Any]:
    task = TaskSpec(
        f"t-{v.name}", "bench", "adapter", 2, v.kind, v.model_blob, site.workload.name,
        site.buckets, cfg, 0.0, FORGET, v.adapter,
    )  # fmt: skip
    if v.cold:
        drop_kept()
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = run_task(task, site, transport)
    row: dict[str, Any] = {
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
    }
    timings = getattr(outcome, "timings", None)  # absent before the change that added it
    if timings is not None:
        row.update(timings.to_dict())
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rows[0].keys()
    out = {k: round(statistics.median(r[k] for r in rows), 4) for k in keys}
    out["cpu_s_min"] = round(min(r["cpu_s"] for r in rows), 4)
    return out


def measure(site: Site, epochs: int, repeat: int, batch_size: int) -> dict[str, Any]:
    transport = MemoryTransport()
    cfg = TrainConfig(local_epochs=epochs, lr=0.01, batch_size=batch_size, seed=3)
    todo = variants(site, transport)
    for v in todo:  # warm-up: torch's lazy initialisation, first-call allocations
        run_once(site, transport, v, cfg)
    rows: dict[str, list[dict[str, Any]]] = {v.name: [] for v in todo}
    for _ in range(repeat):
        for v in todo:
            rows[v.name].append(run_once(site, transport, v, cfg))
    result = {name: summary(r) for name, r in rows.items()}
    return {"variants": result, **ratios(result)}


def ratios(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each FUSED task's CPU over finetune's; a whole round's (training and its evaluation)."""
    cpu = {name: r["cpu_s"] for name, r in result.items()}
    full, cycle = cpu["finetune"], cpu["finetune"] + cpu["evaluate"]
    tasks = {n: round(c / full, 3) for n, c in cpu.items() if n.startswith("fused")}
    rounds = {
        f"{n}_{when}": round((cpu[f"fused_{n}_{when}"] + cpu[f"fused_{n}_eval_{when}"]) / cycle, 3)
        for n in ("fc", "default", "sample")
        for when in ("first", "later")
    }
    return {"cpu_ratio_to_finetune": tasks, "round_cpu_ratio_to_finetune": rounds}


def participant_site(participants: int, index: int) -> Site:
    source = load_source("fashionmnist")
    shards = partition_source(source, PartitionConfig(num_participants=participants, seed=0))
    return shard_site(shards[index])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the agent's: 1)")
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--participant", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    site = participant_site(args.participants, args.participant)
    report: dict[str, Any] = {
        "model": "lenet",
        "data": "fashionmnist",
        "train_samples": len(site.data.train),
        "test_samples": len(site.data.test),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "by_epochs": {str(e): measure(site, e, args.repeat, args.batch_size) for e in args.epochs},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
