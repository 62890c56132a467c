"""The wire counters in both modes: totals by method, direction and phase always (a fixed
number of series at any number of participants), each participant's bytes only with
per-participant metrics, on their own registry and path."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from fused.common.rpc.metering import WireMetrics
from fused.common.runtime.config import load_config
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.metrics_http import PARTICIPANTS_PATH, serve_metrics
from fused.coordinator.server import Coordinator, CoordinatorConfig

PER_PARTICIPANT = "fused_participant_wire_bytes_total"


def total(registry: CollectorRegistry, method: str, direction: str, phase: str) -> float | None:
    labels = {"method": method, "direction": direction, "phase": phase}
    return registry.get_sample_value("fused_wire_bytes_total", labels)


def messages(registry: CollectorRegistry, method: str, direction: str, phase: str) -> float | None:
    labels = {"method": method, "direction": direction, "phase": phase}
    return registry.get_sample_value("fused_wire_messages_total", labels)


def of(registry: CollectorRegistry, direction: str, phase: str, who: str) -> float | None:
    labels = {"direction": direction, "phase": phase, "participant": who}
    return registry.get_sample_value(PER_PARTICIPANT, labels)


def names(registry: CollectorRegistry) -> set[str]:
    """The metric families on the registry (counter x: x_total and x_created)."""
    return {family.name for family in registry.collect()}


def record_traffic(wire: WireMetrics) -> None:
    """p0 and p1 upload in phase train (p1 twice), p0 polls; a phase nobody knows."""
    wire.record("UploadBlob", "received", "train", "p0", 100)
    wire.record("UploadBlob", "received", "train", "p1", 30, messages=2)
    wire.record("UploadBlob", "received", "train", "p1", 5)
    wire.record("PullTask", "received", "none", "p0", 7)
    wire.record("PullTask", "sent", "made-up", "p0", 11)


def test_aggregate_only_sums_participants_and_keeps_no_participant_label() -> None:
    registry = CollectorRegistry()
    wire = WireMetrics(registry)
    record_traffic(wire)
    assert wire.participant_bytes is None
    assert total(registry, "UploadBlob", "received", "train") == 135
    assert messages(registry, "UploadBlob", "received", "train") == 4
    assert total(registry, "PullTask", "received", "none") == 7
    assert total(registry, "PullTask", "sent", "other") == 11  # unknown phases share "other"
    assert "fused_participant_wire_bytes" not in names(registry)
    labels = {k for family in registry.collect() for s in family.samples for k in s.labels}
    assert labels == {"method", "direction", "phase"}


def test_aggregate_series_do_not_grow_with_participants() -> None:
    registry = CollectorRegistry()
    wire = WireMetrics(registry)
    for i in range(500):
        wire.record("Heartbeat", "received", "none", f"p{i}", 3)
    (family,) = (f for f in registry.collect() if f.name == "fused_wire_bytes")
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [1500]


def test_per_participant_bytes_on_their_own_registry() -> None:
    registry, per_participant = CollectorRegistry(), CollectorRegistry()
    wire = WireMetrics(registry, per_participant)
    record_traffic(wire)
    assert total(registry, "UploadBlob", "received", "train") == 135  # totals as without
    assert of(per_participant, "received", "train", "p0") == 100
    assert of(per_participant, "received", "train", "p1") == 35
    assert of(per_participant, "received", "none", "p0") == 7
    assert of(per_participant, "sent", "other", "p0") == 11
    assert of(per_participant, "sent", "train", "p1") is None
    assert "fused_participant_wire_bytes" not in names(registry)
    assert names(per_participant) == {"fused_participant_wire_bytes"}  # no message counts


@pytest.mark.parametrize("on", [False, True])
def test_coordinator_metrics_in_both_modes(on: bool) -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry, CollectorRegistry() if on else None)
    metrics.wire.record("PushResult", "received", "adapter", "p3", 9)
    assert total(registry, "PushResult", "received", "adapter") == 9
    if on:
        assert metrics.per_participant is not None
        assert of(metrics.per_participant, "received", "adapter", "p3") == 9
    else:
        assert metrics.per_participant is None


def test_the_option_is_off_by_default_and_a_flag() -> None:
    assert CoordinatorConfig().per_participant_metrics is False
    assert Coordinator(CoordinatorConfig()).metrics.per_participant is None
    on = load_config(
        CoordinatorConfig, ["--per-participant-metrics"], prog="t", section="coordinator"
    )
    assert on.per_participant_metrics is True
    assert Coordinator(on).metrics.per_participant is not None


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(params=[False, True], ids=["aggregate-only", "per-participant"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[int, bool]]:
    registry = CollectorRegistry()
    per_participant = CollectorRegistry() if request.param else None
    WireMetrics(registry, per_participant).record("UploadBlob", "received", "train", "p0", 42)
    server = serve_metrics("127.0.0.1", 0, registry, per_participant)
    try:
        yield server.server_port, request.param
    finally:
        server.shutdown()
        server.server_close()


def test_endpoints(endpoint: tuple[int, bool]) -> None:
    port, on = endpoint
    status, main = get(port, "/metrics")
    assert status == 200
    assert (
        'fused_wire_bytes_total{direction="received",method="UploadBlob",phase="train"} 42.0'
        in main
    )
    assert "participant" not in main
    status, text = get(port, PARTICIPANTS_PATH)
    if on:
        assert status == 200
        expected = f'{PER_PARTICIPANT}{{direction="received",participant="p0",phase="train"}} 42.0'
        assert expected in text and "fused_wire_bytes_total" not in text
    else:  # never the main registry under the participants' path: no series stored twice
        assert status == 404 and "per_participant_metrics" in text
    assert get(port, PARTICIPANTS_PATH + "/")[0] == status
