"""Participants read adapter values their coordinator stored as fused-adapter-v2 before the
upgrade (a resumed job's rounds, an evaluation of an old adapter version): the task fetches
them by Task.adapter.values_blob_id, decodes them with the shared `decode_adapter`, and runs
exactly as from the same values in v3."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fused.common.codecs.adapter_codec import (
    MAGIC,
    AdapterCodecError,
    decode_adapter,
    encode_adapter,
)
from fused.common.domain.tasks import TaskKind, TaskOutcome
from fused.common.ml.adapters import AdapterLayout
from fused.participant.executor import adapter_layout
from fused.participant.handlers import run_task
from fused.participant.site import Site
from tests.unit.adapter_v2_payloads import encode_v2
from tests.unit.test_handlers import MemoryTransport, _adapter, _task, site

__all__ = ["site"]  # the module-scoped fixture, shared with test_handlers


def _run(
    site: Site, stored: bytes, kind: TaskKind = TaskKind.ADAPTER_TRAIN
) -> tuple[TaskOutcome, MemoryTransport]:
    """A task on the adapter whose values are the blob ``stored``; its outcome without the
    times (uploads are named by their sha256: equal ids, equal bytes)."""
    transport = MemoryTransport()
    ref = dataclasses.replace(_adapter(site), values_blob_id=transport.put(stored))
    outcome = run_task(_task(transport, kind, ref), site, transport)
    train = outcome.train and dataclasses.replace(outcome.train, seconds=0.0)
    return dataclasses.replace(outcome, train=train, timings=None), transport


def _mean(layout: AdapterLayout) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {n: torch.randn(int(i.numel()), generator=gen) * 1e-2 for n, i in layout.indices.items()}


def test_a_round_resumed_from_stored_v2_values_trains_as_from_v3(site: Site) -> None:
    layout = adapter_layout(site.workload, _adapter(site))
    mean = _mean(layout)
    from_v2, transport = _run(site, encode_v2(layout, mean, "float32"))  # stored as float32
    assert from_v2 == _run(site, encode_adapter(layout, mean))[0]
    assert from_v2.train is not None
    uploaded = transport.blobs[from_v2.train.update_blob_id]
    assert uploaded.startswith(MAGIC)  # what participants write is v3
    trained = decode_adapter(uploaded, layout, "float32")
    assert any(not torch.equal(trained[n], mean[n]) for n in layout.names)


def test_an_adapter_version_made_before_v3_evaluates_as_from_v3(site: Site) -> None:
    """`fusedctl eval` of an old adapter version sends its stored values (AdapterMeta.ref)."""
    layout = adapter_layout(site.workload, _adapter(site))
    mean = _mean(layout)
    from_v2 = _run(site, encode_v2(layout, mean, "float32"), TaskKind.EVALUATE)[0]
    assert from_v2.eval is not None
    assert from_v2 == _run(site, encode_adapter(layout, mean), TaskKind.EVALUATE)[0]
    other = encode_adapter(layout, {n: v * 100 for n, v in mean.items()})
    assert from_v2 != _run(site, other, TaskKind.EVALUATE)[0]  # the values do count


@pytest.mark.parametrize("damage", ["truncated", "trailing"])
def test_a_damaged_stored_v2_blob_fails_the_task(site: Site, damage: str) -> None:
    layout = adapter_layout(site.workload, _adapter(site))
    stored = encode_v2(layout, {n: torch.ones(int(i.numel())) for n, i in layout.indices.items()})
    stored = stored[:-1] if damage == "truncated" else stored + b"\0"
    with pytest.raises(AdapterCodecError, match=r"^adapter payload \(fused-adapter-v2\)"):
        _run(site, stored)
