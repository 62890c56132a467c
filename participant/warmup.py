"""Warm-up at agent start: one training step of the site's workload on a throwaway model.

A fresh process's first forward/backward/optimizer step pays torch's lazy initialisation
(imports behind the optimizer, kernel and allocator set-up): over a second on CPU, against
milliseconds for the steps after it. Paid here, before the agent registers, it no longer
lands in the first round of the first job.
"""

from __future__ import annotations

import logging
import time

import torch

from fused.common.domain.train_config import TrainConfig
from fused.participant.site import Site
from fused.participant.training import current_hardware, train_local

log = logging.getLogger(__name__)

BATCH = 4  # samples per step: enough for every layer's kernels, cheap for any model
STEPS = 2  # the second step takes the momentum buffer's path, as every later step does


def warm_up(site: Site) -> float:
    """Train a fresh copy of the site's model for STEPS steps on its first samples, on the
    process's hardware; returns the seconds it took. Nothing is kept: the global RNG is
    restored (model construction draws from it) and the model is thrown away."""
    train = site.data.train
    data = train.subset(slice(0, min(len(train), BATCH * STEPS)))
    cfg = TrainConfig(
        local_epochs=1,
        lr=1e-3,
        momentum=0.9,  # the paths the tasks' optimiser takes (buffers, decay)
        weight_decay=5e-4,
        batch_size=max(1, len(data) // STEPS),
    )
    device = current_hardware().device
    cuda = [device.index or 0] if device.type == "cuda" else []  # its RNG is restored too
    started = time.perf_counter()
    with torch.random.fork_rng(devices=cuda):
        train_local(site.workload.make_model(), data, cfg, objective=site.workload)
    return time.perf_counter() - started


def warm_up_logged(site: Site) -> None:
    """warm_up, logged; a workload that fails here is left for its first task to report."""
    try:
        seconds = warm_up(site)
    except Exception as exc:  # the workload's own code: its tasks will report the cause
        log.warning("warm-up step failed (tasks will report it): %r", exc)
        return
    log.info("warm-up training step took %.3f s", seconds)
