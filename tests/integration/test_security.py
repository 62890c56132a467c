"""Transport security and identity with real processes: mutual TLS, bearer tokens, roles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from fused.cli.pki import init_pki
from fused.common.rpc.channels import TlsFiles, create_channel
from fused.common.rpc.identity import read_token_file
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.participant.site import builtin_summary
from fused.proto.v1 import control_pb2, control_pb2_grpc, participant_pb2, participant_pb2_grpc
from fused.tools.launch import LocalFederation

PARTICIPANTS = ("p0", "p1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    init_pki(out, PARTICIPANTS)
    return out


def tls_of(pki: Path, who: str) -> TlsFiles:
    return TlsFiles(pki / f"{who}.pem", pki / f"{who}.key", pki / "ca.pem")


def server_tls(pki: Path) -> tuple[str, ...]:
    return ("--tls-cert", str(pki / "coordinator.pem"), "--tls-key", str(pki / "coordinator.key"))


def register(pid: str) -> participant_pb2.RegisterRequest:
    data = builtin_summary("mlp", [5] * 10, 0, "digits")
    return participant_pb2.RegisterRequest(
        protocol_version=PROTOCOL_VERSION, participant_id=pid, data=data
    )


def md(pid: str) -> tuple[tuple[str, str], ...]:
    return (("fused-participant", pid),)


def refused(call: object, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() is code, err.value.details()
    assert text in (err.value.details() or ""), err.value.details()


@pytest.fixture(scope="module")
def mtls(
    pki: Path, digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    """Mutual TLS: identities come from client certificates."""
    work = tmp_path_factory.mktemp("mtls")
    with LocalFederation(work, tls=tls_of(pki, "operator-admin")) as fed:
        fed.start_coordinator(
            *server_tls(pki),
            *("--tls-ca", str(pki / "ca.pem"), "--health-listen", "127.0.0.1:0"),
        )
        tls = tls_of(pki, "participant-p0")
        fed.start_participant(
            digits_shards / "p0",
            *("--tls-ca", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)),
        )
        fed.wait_online(1)
        yield fed


def test_mtls_participant_agent_joins_and_operator_controls(mtls: LocalFederation) -> None:
    reply = mtls.control().ListParticipants(control_pb2.ListParticipantsRequest())
    assert [(p.participant_id, p.online) for p in reply.participants] == [("p0", True)]


def test_mtls_health_is_served_to_any_verified_peer(mtls: LocalFederation, pki: Path) -> None:
    channel = create_channel(mtls.address, tls_of(pki, "participant-p1"))
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_mtls_plaintext_health_port_serves_health_only(mtls: LocalFederation) -> None:
    """For probes that cannot present a client certificate (Kubernetes grpc probes)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{mtls.health_port}")
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = control_pb2_grpc.ControlServiceStub(channel)
    refused(lambda: stub.ListJobs(control_pb2.ListJobsRequest()), grpc.StatusCode.UNIMPLEMENTED, "")


def test_mtls_reflection_lists_the_services(mtls: LocalFederation, pki: Path) -> None:
    channel = create_channel(mtls.address, tls_of(pki, "participant-p1"))
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"fused.v1.ParticipantService", "fused.v1.ControlService"} <= set(services)
    assert "grpc.health.v1.Health" in services


def test_mtls_a_participant_cannot_act_as_another(mtls: LocalFederation, pki: Path) -> None:
    stub = participant_pb2_grpc.ParticipantServiceStub(
        create_channel(mtls.address, tls_of(pki, "participant-p1"))
    )
    denied = grpc.StatusCode.PERMISSION_DENIED
    refused(lambda: stub.Register(register("p0")), denied, "authenticated as 'p1'")
    refused(lambda: stub.Register(register("p0"), metadata=md("p0")), denied, "claims to be")
    pull = participant_pb2.PullTaskRequest(participant_id="p0", wait_s=0)
    refused(lambda: stub.PullTask(pull), denied, "request names participant 'p0'")
    beat = participant_pb2.HeartbeatRequest(participant_id="p0")
    refused(lambda: stub.Heartbeat(beat), denied, "request names participant 'p0'")
    assert stub.Register(register("p1")).poll_wait_s > 0  # as itself, it may


def test_mtls_control_needs_an_operator_certificate(mtls: LocalFederation, pki: Path) -> None:
    as_participant = control_pb2_grpc.ControlServiceStub(
        create_channel(mtls.address, tls_of(pki, "participant-p0"))
    )
    refused(
        lambda: as_participant.ListJobs(control_pb2.ListJobsRequest()),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs an operator credential",
    )


def test_mtls_refuses_a_client_without_certificate(mtls: LocalFederation, pki: Path) -> None:
    channel = create_channel(mtls.address, TlsFiles(ca=pki / "ca.pem"))
    stub = control_pb2_grpc.ControlServiceStub(channel)
    refused(
        lambda: stub.ListJobs(control_pb2.ListJobsRequest(), timeout=5),
        grpc.StatusCode.UNAVAILABLE,
        "",
    )


@pytest.fixture(scope="module")
def tokens(
    pki: Path, digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    """Server-side TLS and bearer tokens: identities come from the auth file's hashes."""
    work = tmp_path_factory.mktemp("tokens")
    operator = read_token_file(pki / "operator-admin.token")
    server_only = TlsFiles(ca=pki / "ca.pem")
    with LocalFederation(work, tls=server_only, operator_token=operator) as fed:
        fed.start_coordinator(
            *server_tls(pki),
            *("--auth-file", str(pki / "auth.toml"), "--log-level", "debug"),
        )
        fed.start_participant(
            digits_shards / "p0",
            *("--tls-ca", str(pki / "ca.pem"), "--token-file", str(pki / "participant-p0.token")),
        )
        fed.wait_online(1)
        yield fed


def participant_stub(
    fed: LocalFederation, pki: Path, token: str | None
) -> participant_pb2_grpc.ParticipantServiceStub:
    channel = create_channel(fed.address, TlsFiles(ca=pki / "ca.pem"), token)
    return participant_pb2_grpc.ParticipantServiceStub(channel)


def test_token_participant_agent_joins(tokens: LocalFederation) -> None:
    reply = tokens.control().ListParticipants(control_pb2.ListParticipantsRequest())
    assert [(p.participant_id, p.online) for p in reply.participants] == [("p0", True)]


def test_token_refusals(tokens: LocalFederation, pki: Path) -> None:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    refused(
        lambda: participant_stub(tokens, pki, None).Register(register("p1")),
        unauthenticated,
        "requires a client certificate or a bearer token",
    )
    refused(
        lambda: participant_stub(tokens, pki, "not-a-token").Register(register("p1")),
        unauthenticated,
        "unknown bearer token",
    )
    p1 = participant_stub(tokens, pki, read_token_file(pki / "participant-p1.token"))
    refused(
        lambda: p1.Register(register("p0")),
        grpc.StatusCode.PERMISSION_DENIED,
        "authenticated as 'p1'",
    )
    as_participant = control_pb2_grpc.ControlServiceStub(
        create_channel(
            tokens.address,
            TlsFiles(ca=pki / "ca.pem"),
            read_token_file(pki / "participant-p1.token"),
        )
    )
    refused(
        lambda: as_participant.ListJobs(control_pb2.ListJobsRequest()),
        grpc.StatusCode.PERMISSION_DENIED,
        "operator credential",
    )


def test_token_unknown_fields_are_refused(tokens: LocalFederation, pki: Path) -> None:
    channel = create_channel(
        tokens.address, TlsFiles(ca=pki / "ca.pem"), read_token_file(pki / "participant-p1.token")
    )
    raw = channel.unary_unary("/fused.v1.ParticipantService/Register", None, None)
    payload = register("p1").SerializeToString() + bytes([0xA8, 0x06, 0x01])  # field 101
    refused(lambda: raw(payload), grpc.StatusCode.INVALID_ARGUMENT, "unexpected field(s) 101")


def test_credentials_never_reach_the_logs(tokens: LocalFederation, pki: Path) -> None:
    test_token_refusals(tokens, pki)  # make sure refusals were logged
    logs = "".join(p.read_text() for p in tokens.work_dir.glob("*.log"))
    assert "refused" in logs
    for token_file in pki.glob("*.token"):
        assert read_token_file(token_file) not in logs, token_file.name
