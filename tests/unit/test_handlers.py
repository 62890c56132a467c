"""run_task (participant/handlers.py) on real digits data through an in-memory transport:
the outcome carries where its time went, stage by stage."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import pytest

from fused.common.codecs.adapter_codec import decode_adapter
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.domain.tasks import AdapterRef, TaskKind, TaskSpec, TaskTimings
from fused.common.ml.adapters import build_layout
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.models import init_model
from fused.participant.handlers import StageClock, run_task
from fused.participant.site import Site, shard_site
from tests.unit.test_executor import CFG, CLEAN, CONFIG, MLP_LAYERS, NUM_CLASSES


class MemoryTransport:
    """Artifacts in a dict by sha256; each download waits `delay_s` (a slow link)."""

    max_download_bytes = 1 << 30

    def __init__(self, delay_s: float = 0.0) -> None:
        self.blobs: dict[str, bytes] = {}
        self.delay_s = delay_s

    def put(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self.blobs[digest] = blob
        return digest

    def fetch(self, digest: str) -> bytes:
        time.sleep(self.delay_s)
        return self.blobs[digest]

    def upload(self, blob: bytes) -> str:
        return self.put(blob)


@pytest.fixture(scope="module")
def site() -> Site:
    return shard_site(partition_source(load_digits_source(), CONFIG)[CLEAN])


def _task(transport: MemoryTransport, kind: TaskKind, adapter: AdapterRef | None) -> TaskSpec:
    weights = init_model("mlp", NUM_CLASSES, seed=0).state_dict()
    blob = transport.put(encode_tensors(weights, {"model": "mlp"}))
    return TaskSpec(
        "t1", "j1", "adapter", 1, kind, blob, "mlp", NUM_CLASSES, CFG, 0.0, None, adapter
    )


def _adapter(site: Site) -> AdapterRef:
    shapes = {n: tuple(p.shape) for n, p in site.workload.make_model().named_parameters()}
    layout = build_layout({n: shapes[n] for n in MLP_LAYERS}, 0.05, 11)
    return AdapterRef(tuple(layout.names), 0.05, 11, layout.digest)


def test_a_training_task_reports_each_stage(site: Site) -> None:
    transport = MemoryTransport(delay_s=0.05)
    started = time.perf_counter()
    outcome = run_task(_task(transport, TaskKind.TRAIN, None), site, transport)
    elapsed = time.perf_counter() - started
    t = outcome.timings
    assert t is not None and outcome.train is not None
    assert t.fetch_s >= 0.05  # the slow download is fetch time, not decode or compute
    assert t.decode_s > 0 and t.compute_s > 0 and t.encode_s > 0 and t.upload_s > 0
    assert t.total_s <= elapsed
    assert outcome.train.update_blob_id in transport.blobs


def test_an_adapter_task_reports_its_stages_and_uploads_the_values(site: Site) -> None:
    transport = MemoryTransport()
    ref = _adapter(site)
    outcome = run_task(_task(transport, TaskKind.ADAPTER_TRAIN, ref), site, transport)
    assert outcome.train is not None and outcome.timings is not None
    assert outcome.timings.compute_s > 0 and outcome.timings.encode_s > 0
    layout = build_layout(
        {
            n: tuple(p.shape)
            for n, p in site.workload.make_model().named_parameters()
            if n in MLP_LAYERS
        },
        0.05,
        11,
    )
    values = decode_adapter(transport.blobs[outcome.train.update_blob_id], layout, "float32")
    assert set(values) == set(MLP_LAYERS)


def test_an_evaluation_task_has_no_encode_or_upload(site: Site) -> None:
    transport = MemoryTransport()
    outcome = run_task(_task(transport, TaskKind.EVALUATE, None), site, transport)
    assert outcome.eval is not None and outcome.timings is not None
    assert outcome.timings.compute_s > 0
    assert outcome.timings.encode_s == 0 and outcome.timings.upload_s == 0


def test_the_clock_sums_a_stage_over_its_intervals_and_knows_only_the_stages() -> None:
    clock = StageClock()
    for _ in range(2):
        with clock.stage("encode"):
            time.sleep(0.01)
    timings = clock.timings()
    assert timings.encode_s >= 0.02
    assert dataclasses.replace(timings, encode_s=0.0) == TaskTimings()
    with pytest.raises(ValueError, match="unknown stage"), clock.stage("thinking"):
        pass


def test_describe_names_every_stage() -> None:
    text = TaskTimings(0.5, 0.25, 2.0, 0.125, 0.125).describe()
    assert text == "3.000 s: fetch 0.500, decode 0.250, compute 2.000, encode 0.125, upload 0.125"
