"""Central evaluation of exported model versions: RA, FA, membership inference, relearning.

The experimenter holds every shard and the official test set, so these numbers come from
the whole data, not from participants' counts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import apply_trigger
from fused.common.ml.data.shards import load_global_test, load_shard, read_partition
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.workloads import workload_for
from fused.participant.executor import load_model
from fused.participant.training import train_local


@dataclass(frozen=True)
class Labelled:
    data: TensorData
    labels: torch.Tensor  # (N,) what counts as correct

    def __len__(self) -> int:
        return len(self.data)

    def as_training(self) -> TensorData:
        d = self.data
        return TensorData(x=d.x, y=self.labels, y_true=d.y_true, ids=d.ids, scale=d.scale)


@dataclass(frozen=True)
class EvalSets:
    remaining: Labelled  # RA
    forgotten: Labelled  # FA (attack success rate for a backdoor)
    members: Labelled  # MIA: forgotten training data as it was trained on
    non_members: Labelled  # MIA: unseen data of the same kind
    relearn: Labelled  # ReA: what relearning trains on


def _take(data: TensorData, mask: torch.Tensor, limit: int, seed: int) -> TensorData:
    index = torch.nonzero(mask).flatten()
    if len(index) > limit:
        gen = torch.Generator().manual_seed(seed)
        index = index[torch.randperm(len(index), generator=gen)[:limit]].sort().values
    return data.subset(index)


def _triggered(data: TensorData, size: int, pixel_max: int) -> TensorData:
    x = apply_trigger(data.x, size, pixel_max)
    return TensorData(x=x, y=data.y, y_true=data.y_true, ids=data.ids, scale=data.scale)


def build_sets(shards_dir: Path, paradigm: str, limit: int = 2000, seed: int = 0) -> EvalSets:
    summary = read_partition(shards_dir)
    test = load_global_test(shards_dir)
    shards = [load_shard(shards_dir / pid) for pid in summary["participant_ids"]]
    every = torch.ones(len(test), dtype=torch.bool)
    if paradigm == "client":
        attacker = next(s for s in shards if s.meta.attacker)
        members = Labelled(attacker.train, attacker.train.y)
        unseen = _take(test, every, len(attacker.train), seed)
        non = Labelled(unseen, (unseen.y_true + 1) % summary["num_classes"])
        return EvalSets(Labelled(test, test.y_true), members, members, non, members)
    if paradigm == "class":
        c = 0
        kept = test.subset(test.y_true != c)
        gone = test.subset(test.y_true == c)
        train_c = _concat([s.train.subset(s.train.y_true == c) for s in shards])
        members = Labelled(
            _take(train_c, torch.ones(len(train_c), dtype=torch.bool), limit, seed),
            torch.full((min(limit, len(train_c)),), c),
        )
        return EvalSets(
            Labelled(kept, kept.y_true),
            Labelled(gone, gone.y_true),
            members,
            Labelled(gone, gone.y_true),
            members,
        )
    holder = next(s for s in shards if s.meta.backdoor_ids)
    target = holder.meta.backdoor_target
    poisoned = holder.train.subset(
        torch.isin(holder.train.ids, torch.tensor(holder.meta.backdoor_ids))
    )
    trig = _triggered(
        test.subset(test.y_true != target), holder.meta.trigger_size, holder.meta.pixel_max
    )
    attack = Labelled(trig, torch.full((len(trig),), target))
    unseen = _take(trig, torch.ones(len(trig), dtype=torch.bool), len(poisoned), seed)
    members = Labelled(poisoned, poisoned.y)
    return EvalSets(
        Labelled(test, test.y_true),
        attack,
        members,
        Labelled(unseen, torch.full((len(unseen),), target)),
        members,
    )


def _concat(parts: list[TensorData]) -> TensorData:
    return TensorData(
        x=torch.cat([p.x for p in parts]),
        y=torch.cat([p.y for p in parts]),
        y_true=torch.cat([p.y_true for p in parts]),
        ids=torch.cat([p.ids for p in parts]),
        scale=parts[0].scale,
    )


@torch.no_grad()
def per_sample_loss(model: torch.nn.Module, data: Labelled, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    x = data.data.features()
    for start in range(0, len(data), batch):
        logits = model(x[start : start + batch])
        out.append(F.cross_entropy(logits, data.labels[start : start + batch], reduction="none"))
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: Labelled, batch: int = 1024) -> float:
    model.eval()
    if len(data) == 0:
        return float("nan")
    x = data.data.features()
    correct = 0
    for start in range(0, len(data), batch):
        pred = model(x[start : start + batch]).argmax(1)
        correct += int((pred == data.labels[start : start + batch]).sum())
    return correct / len(data)


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([members, non_members])
    ranks = np.empty(len(scores), dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1, n0 = len(members), len(non_members)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def mia_auc(model: torch.nn.Module, sets: EvalSets) -> float:
    """Loss-threshold membership inference (Yeom et al., 2018): lower loss = member."""
    return auc(-per_sample_loss(model, sets.members), -per_sample_loss(model, sets.non_members))


def relearn_fa(model: torch.nn.Module, sets: EvalSets, cfg: TrainConfig, epochs: int) -> float:
    """ReA: FA after training a copy on the forgotten data for a few epochs."""
    clone = copy.deepcopy(model)
    train_local(
        clone,
        sets.relearn.as_training(),
        TrainConfig(
            local_epochs=epochs,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        ),
    )
    return accuracy(clone, sets.forgotten)


def evaluate_weights(
    model_name: str,
    weights: dict[str, torch.Tensor],
    sets: EvalSets,
    cfg: TrainConfig,
    relearn_epochs: int,
) -> dict[str, float]:
    model = load_model(workload_for(model_name, 10), weights)
    return {
        "ra": accuracy(model, sets.remaining),
        "fa": accuracy(model, sets.forgotten),
        "mia_auc": mia_auc(model, sets),
        "rea": relearn_fa(model, sets, cfg, relearn_epochs),
    }
