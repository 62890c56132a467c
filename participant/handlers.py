"""What a participant does for each task kind: one handler per kind, looked up in HANDLERS.

A new task kind is one handler here plus its entry in the table; the agent only pulls tasks
and pushes the outcomes back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from fused.common.codecs.adapter_codec import decode_adapter, encode_adapter
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.domain.tasks import (
    TIMING_STAGES,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    TaskTimings,
    TrainOutcome,
)
from fused.common.ml.adapters import AdapterLayout, zero_values
from fused.participant.executor import (
    adapter_layout,
    local_adapter_update,
    local_evaluate,
    local_sensitivity,
    local_update,
)
from fused.participant.site import Site
from fused.participant.training import TrainStats

log = logging.getLogger(__name__)


class ArtifactTransport(Protocol):
    """A task's artifacts, by sha256: participant.transfer.TaskTransfer over gRPC."""

    @property
    def max_download_bytes(self) -> int: ...

    def fetch(self, digest: str) -> bytes: ...

    def upload(self, blob: bytes) -> str: ...


class StageClock:
    """Wall-clock seconds one task spends in each stage (TIMING_STAGES), summed over the
    stage's intervals: what the outcome reports as its timings."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(TIMING_STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self._seconds:
            raise ValueError(f"unknown stage {name!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def timings(self) -> TaskTimings:
        return TaskTimings(**{f"{name}_s": s for name, s in self._seconds.items()})


@dataclass(frozen=True)
class TimedTransport:
    """A task's transport whose downloads count as fetch and uploads as upload. An artifact
    the transport holds already (cached, or sent inline) costs next to nothing."""

    inner: ArtifactTransport
    clock: StageClock

    @property
    def max_download_bytes(self) -> int:
        return self.inner.max_download_bytes

    def fetch(self, digest: str) -> bytes:
        with self.clock.stage("fetch"):
            return self.inner.fetch(digest)

    def upload(self, blob: bytes) -> str:
        with self.clock.stage("upload"):
            return self.inner.upload(blob)


@dataclass(frozen=True)
class TaskContext:
    """What a handler works on: this participant's workload and data, the task's inputs."""

    site: Site
    weights: dict[str, torch.Tensor]  # the task's model, checked against its schema
    layout: AdapterLayout | None  # the task's adapter (mask derived here), if it has one
    values: dict[str, torch.Tensor]  # the adapter's current values; {} without one
    started: float  # time.monotonic() at the task's start: its seconds include transfers
    clock: StageClock  # the handler times its compute and encode stages on it


Handler = Callable[[TaskSpec, TaskContext, ArtifactTransport], TaskOutcome]


class NonFiniteResult(ValueError):
    """Local work produced NaN or Inf (a diverged loss, a poisoned model): nothing is uploaded,
    and the agent reports the task's error instead of a result the coordinator would refuse."""


def check_finite(stats: TrainStats, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise NonFiniteResult unless the mean loss and every value are finite."""
    if not math.isfinite(stats.mean_loss):
        raise NonFiniteResult(
            f"local training diverged: mean loss {stats.mean_loss} (the task's model may be "
            "poisoned, or the workload's loss is not finite); not uploading"
        )
    bad = sorted(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise NonFiniteResult(
            f"local training produced non-finite values in {len(bad)} tensor(s), first "
            f"{bad[0]!r}; not uploading"
        )


def run_task(task: TaskSpec, site: Site, transport: ArtifactTransport) -> TaskOutcome:
    """Fetch the task's inputs and run its kind's handler; the outcome carries the seconds
    each stage took. A kind without a handler, or a task for another workload, is a
    ValueError, which the agent reports as the task's error."""
    started, cpu = time.monotonic(), time.process_time()
    handler = HANDLERS.get(task.kind)
    if handler is None:
        raise ValueError(f"task {task.task_id}: unsupported task kind {task.kind}")
    site.check_task(task.model_name, task.num_classes)
    clock = StageClock()
    timed = TimedTransport(transport, clock)
    blob = timed.fetch(task.model_blob_id)
    with clock.stage("decode"):
        weights, _ = decode_tensors(
            blob, schema=site.weights_schema, max_bytes=transport.max_download_bytes
        )
    layout, values = _adapter(task, site, timed)
    outcome = handler(task, TaskContext(site, weights, layout, values, started, clock), timed)
    timings = clock.timings()
    cpu_s = time.process_time() - cpu  # the whole process's: on a busy host, wall is not work
    kind = task.kind.value
    log.info("task %s (%s) took %s; cpu %.3f s", task.task_id, kind, timings.describe(), cpu_s)
    return dataclasses.replace(outcome, timings=timings)


def _adapter(
    task: TaskSpec, site: Site, transport: TimedTransport
) -> tuple[AdapterLayout | None, dict[str, torch.Tensor]]:
    """The task's adapter layout (mask derived locally) and current values, if any."""
    if task.adapter is None:
        return None, {}
    with transport.clock.stage("decode"):
        layout = adapter_layout(site.workload, task.adapter)
    if not task.adapter.values_blob_id:
        return layout, zero_values(layout)
    data = transport.fetch(task.adapter.values_blob_id)
    with transport.clock.stage("decode"):
        return layout, decode_adapter(data, layout, dtype="float32")  # the coordinator's mean


def train(task: TaskSpec, ctx: TaskContext, transport: ArtifactTransport) -> TaskOutcome:
    """FedAvg step on the remaining data; upload the new weights."""
    with ctx.clock.stage("compute"):
        state, stats = local_update(ctx.site, ctx.weights, task.train, task.forget, task.excluded)
        check_finite(stats, state)
    with ctx.clock.stage("encode"):
        blob = encode_tensors(state, {"model": task.model_name})
    return _trained(task, ctx, transport.upload(blob), stats)


def adapter_train(task: TaskSpec, ctx: TaskContext, transport: ArtifactTransport) -> TaskOutcome:
    """Train only the sparse adapter values on a frozen base; upload the values."""
    if ctx.layout is None or task.adapter is None:
        raise ValueError("an adapter training task without an adapter")
    with ctx.clock.stage("compute"):
        new_values, stats = local_adapter_update(
            ctx.site, ctx.weights, ctx.layout, ctx.values, task.train, task.forget, task.excluded
        )
        check_finite(stats, new_values)
    with ctx.clock.stage("encode"):
        blob = encode_adapter(ctx.layout, new_values, dtype=task.adapter.upload_dtype)
    return _trained(task, ctx, transport.upload(blob), stats)


def _trained(task: TaskSpec, ctx: TaskContext, blob_id: str, stats: TrainStats) -> TaskOutcome:
    seconds = time.monotonic() - ctx.started
    train = TrainOutcome(blob_id, stats.num_examples, stats.mean_loss, seconds)
    return TaskOutcome(ctx.site.participant_id, task.task_id, train=train)


def evaluate(task: TaskSpec, ctx: TaskContext, transport: ArtifactTransport) -> TaskOutcome:
    """Counts on the local test data; a task with an adapter evaluates base plus adapter."""
    with ctx.clock.stage("compute"):
        site, forget, excluded = ctx.site, task.forget, task.excluded
        ev = local_evaluate(site, ctx.weights, forget, excluded, ctx.layout, ctx.values)
    if not math.isfinite(ev.loss_sum):
        raise NonFiniteResult(f"evaluation loss is {ev.loss_sum} (the model may be poisoned)")
    return TaskOutcome(ctx.site.participant_id, task.task_id, eval=ev)


def sensitivity(task: TaskSpec, ctx: TaskContext, transport: ArtifactTransport) -> TaskOutcome:
    """Per-tensor L1 distances after one round of training (and on the forgotten data, when
    the task carries the request); the model stays here."""
    with ctx.clock.stage("compute"):
        outcome = local_sensitivity(
            ctx.site, ctx.weights, task.train, task.excluded, task.forget, task.forget_only
        )
    moved = [*outcome.distances.values(), *outcome.forget_distances.values()]
    if not all(math.isfinite(d) for d in moved):
        raise NonFiniteResult("local training diverged: non-finite layer distances")
    return TaskOutcome(ctx.site.participant_id, task.task_id, sensitivity=outcome)


HANDLERS: Mapping[TaskKind, Handler] = {
    TaskKind.TRAIN: train,
    TaskKind.EVALUATE: evaluate,
    TaskKind.SENSITIVITY: sensitivity,
    TaskKind.ADAPTER_TRAIN: adapter_train,
}
