"""The job both systems of `bench.flower_compare` run: settings, shards and the accuracy of a
final model, shared by the FUSED side, the Flower side and the compute timing."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fused.common.domain.train_config import TrainConfig

# The FedAvg settings.
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 32
LOCAL_EPOCHS = 1
# The models compared, each on the data set it is built for.
MODEL_DATASETS = {"mlp": "digits", "lenet": "fashionmnist"}


@dataclass(frozen=True)
class Job:
    dataset: str
    model: str
    num_classes: int
    participants: int
    rounds: int  # run, warm-up rounds included
    warmup: int  # the first rounds, left out of the steady-state figures
    seed: int
    shards: Path
    work_dir: Path
    agent_warmup: bool = True  # FUSED agents' one training step at start
    flower_aggregation: str = "flwr"  # or "fused": FUSED's mean on Flower's server
    train_sizes: tuple[int, ...] = ()  # samples per participant, in shard order

    @property
    def measured(self) -> int:
        return self.rounds - self.warmup

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
        return 300.0 + 600.0 * self.rounds


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
