"""A participant's local PyTorch work: SGD training on its split and per-class evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import frozen_norm_stats
from fused.common.ml.data.tensors import TensorData

__all__ = ["EvalCounts", "TrainConfig", "TrainStats", "evaluate", "train_local"]


@dataclass(frozen=True)
class TrainStats:
    num_examples: int  # examples in the local split (the FedAvg weight)
    mean_loss: float  # mean cross-entropy over every example seen in every epoch
    steps: int  # optimiser steps taken


@dataclass(frozen=True)
class EvalCounts:
    correct: list[int]  # correct[c]: correct predictions among examples labelled c
    total: list[int]  # total[c]: examples labelled c
    loss_sum: float  # summed cross-entropy over all examples

    @property
    def num_examples(self) -> int:
        return sum(self.total)

    @property
    def accuracy(self) -> float:
        n = self.num_examples
        return sum(self.correct) / n if n > 0 else 0.0


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_local(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    params: Iterable[nn.Parameter] | None = None,
    freeze_norm_stats: bool = False,
) -> TrainStats:
    """Train `model` in place with SGD on `data` for `cfg.local_epochs` epochs.

    With `freeze_norm_stats`, normalisation layers stay in eval mode so their running
    statistics (buffers, not parameters) never change: the base model stays bit-exact.

    Only `params` (default: every parameter that requires grad) are updated; the model's other
    parameters are temporarily frozen and restored afterwards. Shuffling uses a local generator
    seeded by `cfg.seed`, so the global RNG is untouched and a rerun from the same state gives
    bit-identical results on CPU. The model's train/eval mode is restored on return.
    """
    n = len(data)
    if n == 0:
        raise ValueError("train_local got an empty data set")
    if cfg.local_epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"local_epochs and batch_size must be positive, got {cfg}")

    all_params = list(model.parameters())
    if params is None:
        trainable = [p for p in all_params if p.requires_grad]
    else:
        trainable = list(params)
        owned = {id(p) for p in all_params}
        if any(id(p) not in owned for p in trainable):
            raise ValueError("params must be parameters of the model being trained")
    if not trainable:
        raise ValueError("train_local has no parameters to train")
    chosen = {id(p) for p in trainable}

    device = _device_of(model)
    x = data.features().to(device)  # (N, C, H, W) float32
    y = data.y.to(device=device, dtype=torch.long)  # (N,)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )

    was_training = model.training
    saved_flags = [p.requires_grad for p in all_params]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    try:
        for p in all_params:
            p.requires_grad_(id(p) in chosen)
        model.train()
        with frozen_norm_stats(model) if freeze_norm_stats else nullcontext():
            for _ in range(cfg.local_epochs):
                perm = torch.randperm(n, generator=gen).to(device)  # (N,)
                for start in range(0, n, cfg.batch_size):
                    idx = perm[start : start + cfg.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    torch.autograd.backward(loss)
                    opt.step()
                    loss_sum += loss.detach().to(torch.float64) * idx.numel()
                    steps += 1
    finally:
        for p, flag in zip(all_params, saved_flags, strict=True):
            p.requires_grad_(flag)
        opt.zero_grad(set_to_none=True)
        model.train(was_training)

    mean_loss = float(loss_sum.item()) / (n * cfg.local_epochs)
    return TrainStats(num_examples=n, mean_loss=mean_loss, steps=steps)


def evaluate(
    model: nn.Module,
    data: TensorData,
    num_classes: int,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
) -> EvalCounts:
    """Per-class correct/total counts and summed loss against `labels` (default: `data.y`).

    Runs under no_grad in eval mode and restores the model's previous mode.
    """
    target = data.y if labels is None else labels
    n = len(data)
    if target.shape != (n,):
        raise ValueError(f"labels have shape {tuple(target.shape)}, expected ({n},)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    lo, hi = (int(target.min()), int(target.max())) if n > 0 else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")

    device = _device_of(model)
    correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                end = start + batch_size
                xb = data.x[start:end].to(device).to(torch.float32) * data.scale  # (B, C, H, W)
                yb = target[start:end].to(device=device, dtype=torch.long)  # (B,)
                logits = model(xb)  # (B, num_classes)
                loss_sum += F.cross_entropy(logits, yb, reduction="sum").to(torch.float64)
                hit = logits.argmax(dim=1) == yb
                correct += torch.bincount(yb[hit], minlength=num_classes)
                total += torch.bincount(yb, minlength=num_classes)
    finally:
        model.train(was_training)
    return EvalCounts(
        correct=[int(v) for v in correct.tolist()],
        total=[int(v) for v in total.tolist()],
        loss_sum=float(loss_sum.item()),
    )
