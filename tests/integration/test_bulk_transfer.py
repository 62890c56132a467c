"""The coordinator's bulk port, with real processes on loopback: artifacts both ways through
the agent's TaskTransfer, refused tickets and bad uploads, and the gRPC-only fallback."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bench.raw_participant import RawParticipant, held_task
from fused.cli.pki import init_pki
from fused.common.domain.specs import TrainingSpec
from fused.common.rpc.bulk_wire import MAGIC, BulkRefused, read_header
from fused.common.rpc.channels import TlsFiles
from fused.common.rpc.task_convert import task_from_proto
from fused.participant.blobs import BlobCache
from fused.participant.bulk import BulkLink
from fused.participant.transfer import TaskTransfer
from fused.proto.v1 import common_pb2, participant_pb2
from fused.tools.launch import LocalFederation, scrape
from tests.integration.test_training import run_job

SPEC = TrainingSpec(rounds=1, min_participants=1, round_deadline_s=600)
MAX_UPLOAD_MB = 8


@dataclass(frozen=True)
class Held:
    fed: LocalFederation
    raw: RawParticipant
    job_id: str
    round: int
    link: BulkLink

    def transfer(self) -> TaskTransfer:
        task = participant_pb2.Task(
            task_id="t",
            job_id=self.job_id,
            round=self.round,
            phase="train",
            kind=participant_pb2.TASK_KIND_TRAIN,
        )
        return TaskTransfer(
            self.raw.stub, task_from_proto(task), self.raw.md, BlobCache(0), 1 << 30, 1 << 20
        )

    def with_bulk(self) -> TaskTransfer:
        plain = self.transfer()
        return TaskTransfer(**{**plain.__dict__, "bulk": self.link})

    def ticket(self, **transfer: object) -> bytes:
        request = participant_pb2.OpenTransferRequest(**transfer)  # type: ignore[arg-type]
        reply = self.raw.stub.OpenTransfer(request, metadata=self.raw.md, timeout=30)
        return bytes(reply.ticket)

    def first_chunk(self, blob_id: str, size: int) -> common_pb2.BlobChunk:
        return common_pb2.BlobChunk(
            blob_id=blob_id, total_size=size, job_id=self.job_id, round=self.round
        )


def blob(tag: str, mib: int) -> bytes:
    return hashlib.sha256(tag.encode()).digest() * (mib * (1 << 20) // 32)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    with LocalFederation(tmp_path_factory.mktemp("bulk")) as fed:
        fed.start_coordinator(
            *("--bulk-listen", "127.0.0.1:0", "--max-upload-mb", str(MAX_UPLOAD_MB)),
            *("--offline-after-s", "600", "--upload-idle-timeout-s", "2"),
            *("--handshake-timeout-s", "1"),
        )
        with held_task(fed.address, fed.control(), "bk", SPEC) as (raw, job_id, rnd):
            port = raw.register().bulk_port
            assert port > 0
            yield Held(fed, raw, job_id, rnd, BulkLink("127.0.0.1", port))


def wire_bytes(fed: LocalFederation, method: str, direction: str) -> float:
    samples = scrape(fed.metrics_port)
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "fused_wire_bytes_total"
        and ("method", method) in labels
        and ("direction", direction) in labels
    )


def test_artifacts_cross_both_ways_and_every_byte_is_counted(held: Held) -> None:
    payload = blob("both ways", 6)
    before_up = wire_bytes(held.fed, "UploadBlob", "received")
    before_down = wire_bytes(held.fed, "DownloadBlob", "sent")
    digest = held.with_bulk().upload(payload)
    assert digest == hashlib.sha256(payload).hexdigest()
    status = held.raw.stub.GetUploadStatus(
        participant_pb2.UploadStatusRequest(blob_id=digest), metadata=held.raw.md
    )
    assert status.complete
    assert held.with_bulk().fetch(digest) == payload
    assert held.with_bulk().upload(payload) == digest  # idempotent: nothing is sent again
    assert wire_bytes(held.fed, "UploadBlob", "received") - before_up >= len(payload)
    assert wire_bytes(held.fed, "DownloadBlob", "sent") - before_down >= len(payload)


def test_an_unknown_ticket_is_refused(held: Held) -> None:
    with pytest.raises(BulkRefused, match="unknown, used or expired ticket"):
        held.link.download(secrets.token_bytes(32), "0" * 64, 1 << 20)


def test_a_connection_that_says_nothing_is_closed(held: Held) -> None:
    with socket.create_connection(("127.0.0.1", held.link.port), timeout=30) as sock:
        sock.sendall(MAGIC[:3])  # then nothing: closed after handshake_timeout_s
        assert sock.recv(1) == b""


def test_a_ticket_is_good_once(held: Held) -> None:
    payload = blob("once", 2)
    digest = held.with_bulk().upload(payload)
    ticket = held.ticket(download=participant_pb2.DownloadBlobRequest(blob_id=digest))
    assert held.link.download(ticket, digest, 1 << 30) == payload
    with pytest.raises(BulkRefused, match="unknown, used or expired ticket"):
        held.link.download(ticket, digest, 1 << 30)


def test_an_upload_that_does_not_match_its_digest_is_refused(held: Held) -> None:
    payload = blob("honest", 2)
    claimed = hashlib.sha256(b"something else").hexdigest()
    ticket = held.ticket(upload=held.first_chunk(claimed, len(payload)))
    with pytest.raises(BulkRefused, match=r"INVALID_ARGUMENT: upload rejected: .*not the declared"):
        held.link.upload(ticket, payload, 0)
    assert held.with_bulk().upload(payload)  # the coordinator serves on


def test_an_oversized_upload_gets_no_ticket(held: Held) -> None:
    too_big = (MAX_UPLOAD_MB << 20) + 1
    with pytest.raises(grpc.RpcError) as err:
        held.ticket(upload=held.first_chunk("a" * 64, too_big))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in (err.value.details() or "")


def test_a_cut_upload_resumes_where_it_stopped(held: Held) -> None:
    payload = blob("cut", 4)
    digest = hashlib.sha256(payload).hexdigest()
    ticket = held.ticket(upload=held.first_chunk(digest, len(payload)))
    with socket.create_connection(("127.0.0.1", held.link.port)) as sock:
        sock.sendall(MAGIC + ticket)
        sock.recv(9)  # go ahead
        sock.sendall(payload[: 1 << 20])
    deadline = time.monotonic() + 30
    while held.raw.upload_offset(digest) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the coordinator notices the cut in its own time
    assert held.raw.upload_offset(digest) == 1 << 20
    assert held.with_bulk().upload(payload) == digest  # resumed at that offset
    assert held.with_bulk().fetch(digest) == payload


def test_a_stalled_upload_is_cut_and_told_where_to_resume(held: Held) -> None:
    payload = blob("stalled", 2)
    digest = hashlib.sha256(payload).hexdigest()
    ticket = held.ticket(upload=held.first_chunk(digest, len(payload)))
    with socket.create_connection(("127.0.0.1", held.link.port), timeout=30) as sock:
        sock.sendall(MAGIC + ticket)
        assert read_header(sock) == (0, 0)  # go ahead
        sock.sendall(payload[: 1 << 20])  # then nothing, past upload_idle_timeout_s
        with pytest.raises(BulkRefused, match=r"sent nothing for 2 s; resume at offset 1048576"):
            read_header(sock)
    assert held.with_bulk().upload(payload) == digest


def test_without_a_bulk_port_artifacts_stream(tmp_path: Path) -> None:
    with LocalFederation(tmp_path) as fed:
        fed.start_coordinator("--offline-after-s", "600")
        with held_task(fed.address, fed.control(), "plain", SPEC) as (raw, job_id, rnd):
            assert raw.register().bulk_port == 0
            plain = Held(fed, raw, job_id, rnd, BulkLink("127.0.0.1", 1)).transfer()
            with pytest.raises(grpc.RpcError) as err:
                request = participant_pb2.DownloadBlobRequest(blob_id="0" * 64)
                raw.stub.OpenTransfer(
                    participant_pb2.OpenTransferRequest(download=request), metadata=raw.md
                )
            assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
            payload = blob("streamed", 2)
            digest = plain.upload(payload)
            assert plain.fetch(digest) == payload


@pytest.fixture(scope="module")
def mtls(digits_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mtls]:
    """Mutual TLS on both ports, every artifact over the bulk port, one real agent."""
    pki = tmp_path_factory.mktemp("pki")
    init_pki(pki, ["p0", "p1"])

    def files(who: str) -> TlsFiles:
        return TlsFiles(pki / f"{who}.pem", pki / f"{who}.key", pki / "ca.pem")

    with LocalFederation(tmp_path_factory.mktemp("mtls"), tls=files("operator-admin")) as fed:
        fed.start_coordinator(
            *(
                "--tls-cert",
                str(pki / "coordinator.pem"),
                "--tls-key",
                str(pki / "coordinator.key"),
            ),
            *("--tls-ca", str(pki / "ca.pem"), "--bulk-listen", "127.0.0.1:0"),
            *("--inline-max-bytes", "0", "--offline-after-s", "600"),
        )
        p0 = files("participant-p0")
        fed.start_participant(
            digits_shards / "p0",
            *("--tls-ca", str(p0.ca), "--tls-cert", str(p0.cert), "--tls-key", str(p0.key)),
        )
        fed.wait_online(1)
        yield Mtls(fed, files)


@dataclass(frozen=True)
class Mtls:
    fed: LocalFederation
    files: Callable[[str], TlsFiles]


def test_an_agent_moves_its_artifacts_over_the_bulk_port_with_mtls(mtls: Mtls) -> None:
    info = run_job(mtls.fed, dataclasses.replace(SPEC, round_deadline_s=60))
    assert info.status == "completed", info.reason
    coordinator = counted(mtls.fed.metrics_port)
    assert coordinator[("OpenTransfer", "received", "train")] > 0
    agent = counted(mtls.fed.participant_metrics["p0"])  # the only agent: the same bytes
    for method in ("DownloadBlob", "UploadBlob"):
        for mine, theirs in (("sent", "received"), ("received", "sent")):
            assert agent[(method, mine, "train")] == coordinator[(method, theirs, "train")] > 0


def counted(metrics_port: int) -> dict[tuple[str, str, str], float]:
    """fused_wire_bytes_total by (method, direction, phase)."""
    return {
        (dict(labels)["method"], dict(labels)["direction"], dict(labels)["phase"]): v
        for (name, labels), v in scrape(metrics_port).items()
        if name == "fused_wire_bytes_total"
    }


def test_a_ticket_is_bound_to_its_participants_certificate(mtls: Mtls) -> None:
    both = dataclasses.replace(SPEC, min_participants=2)  # the agent p0 takes part too
    tls = mtls.files("participant-p1")
    with held_task(mtls.fed.address, mtls.fed.control(), "p1", both, tls) as (raw, job_id, rnd):
        port = raw.register().bulk_port
        payload = blob("mine", 2)
        digest = hashlib.sha256(payload).hexdigest()
        request = participant_pb2.OpenTransferRequest(
            upload=common_pb2.BlobChunk(
                blob_id=digest, total_size=len(payload), job_id=job_id, round=rnd
            )
        )
        ticket = raw.stub.OpenTransfer(request, metadata=raw.md, timeout=30).ticket
        thief = BulkLink("127.0.0.1", port, mtls.files("participant-p0"))
        with pytest.raises(BulkRefused, match="not that of the ticket's participant"):
            thief.upload(ticket, payload, 0)
        with pytest.raises(OSError):  # no TLS, no transfer
            BulkLink("127.0.0.1", port).upload(ticket, payload, 0)
        mine = BulkLink("127.0.0.1", port, mtls.files("participant-p1"))
        ticket = raw.stub.OpenTransfer(request, metadata=raw.md, timeout=30).ticket
        assert mine.upload(ticket, payload, 0) == digest
