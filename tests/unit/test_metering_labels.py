"""How counted bytes are labelled: by phase (from metadata or channel views) and, on the
server's per-participant registry, by participant; across concurrent views, and as reported
to the byte hook.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fused.common.rpc.metering import KNOWN_PHASES, MD_PARTICIPANT, MD_PHASE
from fused.proto.v1 import participant_pb2, participant_pb2_grpc
from tests.unit.test_metering import (
    MD,
    PID,
    Metadata,
    Wire,
    assert_ends_agree,
    blob_chunks,
    byte_count,
    message_count,
    participant_bytes,
    running_wire,
    serialized_size,
)


@pytest.fixture
def wire() -> Iterator[Wire]:
    yield from running_wire()


def test_unknown_participant_and_phase_labels(wire: Wire) -> None:
    assert "warmup" not in KNOWN_PHASES
    channel, client = wire.client("p9")
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("warmup"))
    request = participant_pb2.HeartbeatRequest(participant_id="p9", task_id="t-1")
    md: Metadata = ((MD_PARTICIPANT, "p9"), (MD_PHASE, "warmup"))
    stub.Heartbeat(request, metadata=md)

    # both ends count an unknown phase as "other"; the server's per-participant bytes
    # collapse ids it does not know
    assert byte_count(client, "Heartbeat", "sent", phase="other") == serialized_size(request)
    assert byte_count(client, "Heartbeat", "sent", phase="warmup") is None
    each = wire.per_participant
    assert participant_bytes(each, "received", "other", "p9") is None
    assert participant_bytes(each, "received", "other", "unknown") == serialized_size(request)
    assert_ends_agree(client, wire.server_registry, "Heartbeat", phase="other")


def test_no_metadata_and_no_phase(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel)  # the base channel: no phase
    request = participant_pb2.HeartbeatRequest(participant_id=PID)
    response = stub.Heartbeat(request)
    assert response.registered is True
    assert byte_count(client, "Heartbeat", "sent", phase="none") == serialized_size(request)
    assert participant_bytes(wire.per_participant, "received", "none", "-") == serialized_size(
        request
    )
    assert wire.hook_calls
    assert all(MD_PARTICIPANT not in md for md, _, _ in wire.hook_calls)


def test_phase_views_share_the_connection_not_the_label(wire: Wire) -> None:
    channel, client = wire.client()
    request = participant_pb2.DownloadBlobRequest(blob_id="ab" * 32)
    views = {phase: channel.with_phase(phase) for phase in ("evaluate", "adapter")}
    for phase, view in views.items():
        stub = participant_pb2_grpc.ParticipantServiceStub(view)
        assert len(list(stub.DownloadBlob(request, metadata=MD))) == 3, phase
    base = participant_pb2_grpc.ParticipantServiceStub(channel)
    assert len(list(base.DownloadBlob(request, metadata=MD))) == 3

    # streamed responses are deserialized on gRPC's threads: still labelled by the view
    for phase in ("evaluate", "adapter", "none"):
        assert message_count(client, "DownloadBlob", "sent", phase=phase) == 1, phase
        assert message_count(client, "DownloadBlob", "received", phase=phase) == 3, phase
        assert byte_count(client, "DownloadBlob", "received", phase=phase) == serialized_size(
            *blob_chunks("ab" * 32)
        ), phase
    assert message_count(client, "DownloadBlob", "received", phase="train") is None
    assert message_count(client, "DownloadBlob", "received", phase="other") is None


def test_concurrent_views_keep_their_phases(wire: Wire) -> None:
    channel, client = wire.client()
    request = participant_pb2.HeartbeatRequest(participant_id=PID)
    phases = ("train", "evaluate", "adapter", "sensitivity")
    errors: list[BaseException] = []

    def worker(phase: str) -> None:
        try:
            stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase(phase))
            for _ in range(5):
                stub.Heartbeat(request, metadata=MD)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in phases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    for phase in phases:
        assert message_count(client, "Heartbeat", "sent", phase=phase) == 5, phase
        assert byte_count(client, "Heartbeat", "sent", phase=phase) == 5 * serialized_size(
            request
        ), phase
    # the server labels by the metadata the calls carried, whatever the client's view
    assert message_count(wire.server_registry, "Heartbeat", "received") == 5 * len(phases)


def test_hook_sees_metadata_and_every_count(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    chunks = blob_chunks("ef" * 32)
    md: Metadata = (*MD, ("fused-job", "job-1"), ("fused-round", "3"))
    stub.UploadBlob(iter(chunks), metadata=md)

    calls = list(wire.hook_calls)
    for seen_md, _, _ in calls:
        assert seen_md[MD_PARTICIPANT] == PID
        assert seen_md[MD_PHASE] == "train"
        assert seen_md["fused-job"] == "job-1"
        assert seen_md["fused-round"] == "3"
    received = [n for _, direction, n in calls if direction == "received"]
    sent = [n for _, direction, n in calls if direction == "sent"]
    assert received == [len(c.SerializeToString()) for c in chunks]
    assert len(sent) == 1
    assert float(sum(sent)) == byte_count(client, "UploadBlob", "received")
    assert {d for _, d, _ in calls} == {"received", "sent"}


def test_the_server_counts_each_callers_bytes_apart(wire: Wire) -> None:
    """Per participant: all of its methods in a phase, without the method; the client's own
    counters have no participant label."""
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    pull = participant_pb2.PullTaskRequest(participant_id=PID, wait_s=0.25)
    chunks = blob_chunks("cd" * 32)
    stub.PullTask(pull, metadata=MD)
    stub.UploadBlob(iter(chunks), metadata=MD)
    for direction, other in (("sent", "received"), ("received", "sent")):
        mine = sum(byte_count(client, m, direction) or 0.0 for m in ("PullTask", "UploadBlob"))
        assert participant_bytes(wire.per_participant, other) == mine > 0
    assert participant_bytes(wire.per_participant, "received", "none") is None
    assert byte_count(wire.per_participant, "PullTask", "received") is None  # totals apart
    assert participant_bytes(wire.server_registry, "received") is None
    assert participant_bytes(client, "sent") is None
