"""A participant's local PyTorch work: SGD training on its split and per-class evaluation, on
the device the agent was started with (CPU by default; CUDA or MPS, optionally mixed precision)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import frozen_norm_stats
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.membership import BINS, loss_histogram
from fused.common.ml.workloads.base import EvalCounts, classification_counts
from fused.participant.prefix import Rows, cut_prefix, tensor_bytes

__all__ = [
    "Accelerators",
    "Classification",
    "EvalCounts",
    "Hardware",
    "Objective",
    "Scores",
    "TrainConfig",
    "TrainStats",
    "current_hardware",
    "evaluate",
    "resolve_hardware",
    "score",
    "train_local",
    "use_hardware",
]


@dataclass(frozen=True)
class TrainStats:
    num_examples: int  # examples in the local split (the FedAvg weight)
    mean_loss: float  # mean training loss over every example seen in every epoch
    steps: int  # optimiser steps taken


class Objective(Protocol):
    """What training and evaluation need of a workload: its input step, loss and counts."""

    def transform(self, inputs: torch.Tensor) -> torch.Tensor: ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> EvalCounts: ...

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Classification:
    """The default objective: logits against integer labels, cross-entropy, per-class hits."""

    num_classes: int

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> EvalCounts:
        return classification_counts(outputs, targets, self.num_classes)

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


_DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Accelerators:
    """What this host offers, probed once; passed in so the resolution table is testable."""

    cuda_capabilities: tuple[tuple[int, int], ...] = ()  # (major, minor) per visible CUDA device
    mps: bool = False

    @classmethod
    def probe(cls) -> Accelerators:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        caps = tuple(torch.cuda.get_device_capability(i) for i in range(count))
        return cls(cuda_capabilities=caps, mps=torch.backends.mps.is_available())


@dataclass(frozen=True)
class Hardware:
    """Where local training and evaluation run. Weights always leave on the model's own device
    (CPU float32 for the executor), so the wire and aggregation never see the choice."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: plain float32 throughout

    @property
    def loss_scaling(self) -> bool:
        # float16's narrow exponent underflows small gradients; bfloat16 has float32's range
        return self.amp_dtype == torch.float16


def resolve_hardware(
    device: str, amp: bool, present: Accelerators | None = None
) -> tuple[Hardware, list[str]]:
    """The device named by `device` (auto, cpu, cuda, cuda:N, mps) on a host with `present`
    accelerators, and warnings to log. Raises ValueError for a name or device this host lacks.

    `--amp` is CUDA-only. Asked for explicitly on cpu or mps it is an error, because the operator
    would otherwise believe a setting is in force that is not (and CPU autocast would break
    bit-identical reruns); with `auto` it is a warning, so one config serves a mixed fleet.
    """
    present = Accelerators.probe() if present is None else present
    name = device.strip().lower()
    cuda_count = len(present.cuda_capabilities)
    if name == "auto":
        name = "cuda:0" if cuda_count else "mps" if present.mps else "cpu"
    elif name == "cuda":
        name = "cuda:0"
    kind, _, index_text = name.partition(":")
    if kind == "cuda":
        if not index_text.isdigit():
            raise ValueError(f"device {device!r}: expected {_DEVICE_CHOICES}")
        index = int(index_text)
        if index >= cuda_count:
            seen = f"{cuda_count} CUDA device(s)" if cuda_count else "no CUDA device"
            raise ValueError(f"device {device!r}: this host has {seen}")
    elif name == "mps":
        if not present.mps:
            raise ValueError(f"device {device!r}: this host has no MPS (Apple GPU) device")
    elif name != "cpu":
        raise ValueError(f"device {device!r}: expected {_DEVICE_CHOICES}")
    resolved = torch.device(name)
    if not amp:
        return Hardware(resolved), []
    if resolved.type != "cuda":
        if device.strip().lower() != "auto":
            raise ValueError(f"amp needs a CUDA device, not {resolved.type}")
        return Hardware(resolved), [f"amp ignored: device auto chose {resolved.type}"]
    # bfloat16 is native from compute capability 8.0 (Ampere) on; older GPUs get float16
    major, _ = present.cuda_capabilities[resolved.index or 0]
    return Hardware(resolved, torch.bfloat16 if major >= 8 else torch.float16), []


_hardware = Hardware()


def use_hardware(hardware: Hardware) -> None:
    """Set where train_local and evaluate run in this process (the agent does once, at start;
    like torch's thread count it is a property of the process, not of a task)."""
    global _hardware
    _hardware = hardware


def current_hardware() -> Hardware:
    return _hardware


def _autocast(hw: Hardware) -> AbstractContextManager[object]:
    if hw.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=hw.device.type, dtype=hw.amp_dtype)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def train_local(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    params: Iterable[nn.Parameter] | None = None,
    freeze_norm_stats: bool = False,
    hardware: Hardware | None = None,
    objective: Objective | None = None,
) -> TrainStats:
    """Train `model` in place with SGD on `data` for `cfg.local_epochs` epochs.

    With `freeze_norm_stats`, normalisation layers stay in eval mode so their running
    statistics (buffers, not parameters) never change: the base model stays bit-exact.

    Only `params` (default: every parameter that requires grad) are updated; the model's other
    parameters are temporarily frozen and restored afterwards. Shuffling uses a local generator
    seeded by `cfg.seed`, so the global RNG is untouched and a rerun from the same state gives
    bit-identical results on CPU. The model's train/eval mode is restored on return.

    Training runs on `hardware` (default: the process's, see use_hardware); the model goes back
    to the device it came on, parameters in their own dtype, before this returns. The loss and
    input step are the workload's (`objective`; default: cross-entropy on the inputs as given).

    When some parameters stay frozen, the part of the model before the first trained tensor
    runs without autograd, once for all epochs (and is kept for the next task on the same base
    and data), where that is exact (participant.prefix); each epoch runs only the rest.
    """
    objective = Classification(0) if objective is None else objective  # loss needs no count
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

    hw = current_hardware() if hardware is None else hardware
    device = hw.device
    home = _device_of(model)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type) if hw.loss_scaling else None

    was_training = model.training
    saved_flags = [p.requires_grad for p in all_params]
    loss_sum = torch.zeros((), dtype=_accumulator_dtype(device), device=device)
    steps = 0
    try:
        model.to(device)  # in place: the Parameter objects (so `chosen` and `opt`) stay the same
        x = data.features().to(device)  # (N, ...) the model's inputs before transform
        y = data.y.to(device)  # (N,)
        for p in all_params:
            p.requires_grad_(id(p) in chosen)
        model.train()
        with frozen_norm_stats(model) if freeze_norm_stats else nullcontext():
            forward = _forward(model, data, x, objective, hw, len(chosen) < len(all_params))
            for _ in range(cfg.local_epochs):
                perm = torch.randperm(n, generator=gen).to(device)  # (N,)
                for start in range(0, n, cfg.batch_size):
                    idx = perm[start : start + cfg.batch_size]
                    opt.zero_grad(set_to_none=True)
                    with _autocast(hw):
                        loss = objective.loss(forward(idx), y[idx])
                    if scaler is None:
                        torch.autograd.backward(loss)
                        opt.step()
                    else:  # skips a step whose scaled gradients overflowed
                        torch.autograd.backward(scaler.scale(loss))
                        scaler.step(opt)
                        scaler.update()
                    loss_sum += loss.detach().to(loss_sum.dtype) * idx.numel()
                    steps += 1
    finally:
        for p, flag in zip(all_params, saved_flags, strict=True):
            p.requires_grad_(flag)
        opt.zero_grad(set_to_none=True)
        model.train(was_training)
        model.to(home)

    mean_loss = float(loss_sum.item()) / (n * cfg.local_epochs)
    return TrainStats(num_examples=n, mean_loss=mean_loss, steps=steps)


def _forward(
    model: nn.Module,
    data: TensorData,
    x: torch.Tensor,
    objective: Objective,
    hw: Hardware,
    partial: bool,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's outputs on the rows `idx` of `x` (`data`'s inputs on the device): through
    a cached frozen prefix when only some parameters train and the cut is exact, through the
    whole model otherwise."""

    def whole(idx: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(objective.transform(x[idx]))
        return out

    if not partial:
        return whole

    def key() -> tuple[bytes, float | None, str, torch.dtype | None]:
        digest = hashlib.blake2b(tensor_bytes(data.x), digest_size=32).digest()
        return digest, data.scale, str(hw.device), hw.amp_dtype

    with _autocast(hw):
        cached = cut_prefix(model, Rows(x, objective.transform, key))
    return whole if cached is None else cached


def _scoring(
    model: nn.Module, data: TensorData, objective: Objective, hw: Hardware
) -> Callable[[int, int], torch.Tensor]:
    """The model's outputs on rows start..end of `data`. A model with an adapter attached
    (only its values require grad) runs through the kept frozen prefix where the cut is exact:
    an adapter job evaluates the same base on the same rows every round."""
    flags = [p.requires_grad for p in model.parameters()]
    if len(data) and any(flags) and not all(flags):
        x = data.features().to(hw.device)
        forward = _forward(model, data, x, objective, hw, partial=True)
        return lambda start, end: forward(torch.arange(start, end, device=hw.device))

    def whole(start: int, end: int) -> torch.Tensor:
        xb = data.subset(slice(start, end)).features().to(hw.device)  # (B, ...)
        out: torch.Tensor = model(objective.transform(xb))
        return out

    return whole


def evaluate(
    model: nn.Module,
    data: TensorData,
    num_classes: int,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    hardware: Hardware | None = None,
    objective: Objective | None = None,
) -> EvalCounts:
    """The objective's counts (default: per-class correct/total and summed cross-entropy over
    `num_classes` classes) against `labels` (default: `data.y`).

    Runs under no_grad in eval mode on `hardware` (default: the process's) and restores the
    model's previous mode and device.
    """
    return score(model, data, num_classes, batch_size, labels, hardware, objective).counts


@dataclass(frozen=True)
class Scores:
    counts: EvalCounts
    loss_histogram: list[int]  # per-example losses in membership.BINS bins (if asked)


def score(
    model: nn.Module,
    data: TensorData,
    num_classes: int,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    hardware: Hardware | None = None,
    objective: Objective | None = None,
    losses: bool = False,
) -> Scores:
    """`evaluate`'s counts and, with `losses`, the histogram of per-example losses."""
    target = data.y if labels is None else labels
    n = len(data)
    if target.shape != (n,):
        raise ValueError(f"labels have shape {tuple(target.shape)}, expected ({n},)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    objective = Classification(num_classes) if objective is None else objective
    hw = current_hardware() if hardware is None else hardware
    device = hw.device
    home = _device_of(model)
    counts = EvalCounts([0] * num_classes, [0] * num_classes, 0.0)
    histogram = [0] * BINS
    was_training = model.training
    model.eval()
    try:
        model.to(device)
        outputs_of = _scoring(model, data, objective, hw)
        with torch.no_grad():
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                yb = target[start:end].to(device)  # (B,)
                with _autocast(hw):
                    outputs = outputs_of(start, end)  # (B, num_classes) for classes
                counts = counts + objective.evaluate(outputs.float(), yb)
                if losses:
                    found = loss_histogram(objective.sample_losses(outputs.float(), yb))
                    histogram = [a + b for a, b in zip(histogram, found, strict=True)]
    finally:
        model.train(was_training)
        model.to(home)
    return Scores(counts, histogram if losses else [])
