"""The development PKI, certificate identities, bearer tokens and a real mutual-TLS handshake."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import stat
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fused.cli.certs import run_init
from fused.cli.pki import init_pki, new_token, write_auth_file
from fused.common.rpc.identity import (
    OPERATOR,
    PARTICIPANT,
    AuthFile,
    Identity,
    hash_token,
    identity_from_cert,
    identity_uri,
    read_auth_file,
    read_token_file,
)

ALICE = Identity(PARTICIPANT, "alice")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    init_pki(out, ["alice", "bob.eu-1"], operators=["admin"])
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(pki: Path) -> PolicyBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return PolicyBuilder().store(Store([_cert(pki / "ca.pem")])).time(now)


def _self_signed(sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# --- certificates ----------------------------------------------------------------------------


def test_init_writes_every_file(pki: Path) -> None:
    names = {p.name for p in pki.iterdir()}
    expected = {"ca.pem", "ca.key", "coordinator.pem", "coordinator.key", "auth.toml"}
    expected |= {"receipt.key", "receipt.pub"}
    for stem in ("participant-alice", "participant-bob.eu-1", "operator-admin"):
        expected |= {f"{stem}.pem", f"{stem}.key", f"{stem}.token"}
    assert names == expected  # and no temp files left behind


def test_client_certs_verify_against_the_ca(pki: Path) -> None:
    verifier = _store(pki).build_client_verifier()
    for stem, ident in (
        ("participant-alice", ALICE),
        ("participant-bob.eu-1", Identity(PARTICIPANT, "bob.eu-1")),
        ("operator-admin", Identity(OPERATOR, "admin")),
    ):
        verified = verifier.verify(_cert(pki / f"{stem}.pem"), [])
        assert verified.subjects == [x509.UniformResourceIdentifier(identity_uri(ident))]


def test_coordinator_cert_verifies_for_every_host(pki: Path) -> None:
    server = _cert(pki / "coordinator.pem")
    for subject in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        _store(pki).build_server_verifier(subject).verify(server, [])
    with pytest.raises(VerificationError):
        _store(pki).build_server_verifier(x509.DNSName("example.com")).verify(server, [])


def test_client_cert_is_not_a_server_cert(pki: Path) -> None:
    verifier = _store(pki).build_server_verifier(x509.DNSName("localhost"))
    with pytest.raises(VerificationError):  # clientAuth only, and no DNS SAN
        verifier.verify(_cert(pki / "participant-alice.pem"), [])


def test_certs_from_another_ca_do_not_verify(pki: Path, tmp_path: Path) -> None:
    init_pki(tmp_path, ["alice"])
    with pytest.raises(VerificationError):
        _store(pki).build_client_verifier().verify(_cert(tmp_path / "participant-alice.pem"), [])


def test_ca_constraints(pki: Path) -> None:
    ca = _cert(pki / "ca.pem")
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    leaf = _cert(pki / "participant-alice.pem")
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(
        days=365, minutes=5
    )


# --- identities ------------------------------------------------------------------------------


def test_identity_round_trip(pki: Path) -> None:
    assert identity_uri(ALICE) == "fused://participant/alice"
    assert identity_from_cert((pki / "participant-alice.pem").read_bytes()) == ALICE
    assert identity_from_cert((pki / "operator-admin.pem").read_bytes()) == Identity(
        OPERATOR, "admin"
    )
    assert identity_from_cert((pki / "coordinator.pem").read_bytes()) is None


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        bytes(range(256)) * 8,
    ],
)
def test_identity_from_garbage_is_none(pem: bytes) -> None:
    assert identity_from_cert(pem) is None


@pytest.mark.parametrize(
    "uris",
    [
        [],  # no SAN at all
        ["spiffe://example.org/alice"],  # a URI, but not ours
        ["fused://participant/-alice"],  # bad first character
        ["fused://participant/al/ice"],
        ["fused://participant/" + "a" * 65],
        ["fused://coordinator/alice"],  # unknown role
        ["fused://participant/alice", "fused://operator/admin"],  # ambiguous
    ],
)
def test_identity_from_cert_without_a_good_uri_is_none(uris: list[str]) -> None:
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    assert identity_from_cert(_self_signed(sans)) is None


def test_identity_ignores_other_uris() -> None:
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier("spiffe://example.org/x"),
        x509.UniformResourceIdentifier("fused://participant/alice"),
    ]
    assert identity_from_cert(_self_signed(sans)) == ALICE


def test_identity_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="bad participant name"):
        Identity(PARTICIPANT, "../etc")
    with pytest.raises(ValueError, match="unknown role"):
        Identity("root", "alice")


# --- tokens and the auth file ----------------------------------------------------------------


def test_token_lookup(pki: Path) -> None:
    auth = read_auth_file(pki / "auth.toml")
    alice = read_token_file(pki / "participant-alice.token")
    admin = read_token_file(pki / "operator-admin.token")
    assert auth.lookup(alice) == ALICE
    assert auth.lookup(admin) == Identity(OPERATOR, "admin")
    assert auth.lookup(new_token()) is None
    assert auth.lookup(alice + "x") is None
    assert auth.lookup("") is None


def test_auth_file_stores_hashes_only(pki: Path) -> None:
    text = (pki / "auth.toml").read_text()
    assert text.startswith("# Written by `fusedctl certs init`.")
    for stem in ("participant-alice", "participant-bob.eu-1", "operator-admin"):
        token = read_token_file(pki / f"{stem}.token")
        assert token not in text
        assert hash_token(token) in text


def test_auth_file_round_trip(tmp_path: Path) -> None:
    auth = AuthFile(
        participants={"alice": hash_token("a"), "bob.eu-1": hash_token("b")},
        operators={"admin": hash_token("c")},
    )
    write_auth_file(tmp_path / "auth.toml", auth)
    assert read_auth_file(tmp_path / "auth.toml") == auth
    assert (
        hash_token("a")
        == "sha256:" + "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[participants]\nalice = "sha256:abc"\n', "alice: hash must be"),
        ('[participants]\nalice = "md5:' + "0" * 64 + '"\n', "alice: hash must be"),
        ('[participants]\n"-bad" = "sha256:' + "0" * 64 + '"\n', "bad name '-bad'"),
        ('[admins]\nroot = "sha256:' + "0" * 64 + '"\n', "unknown table 'admins'"),
        (
            '[participants]\na = "sha256:'
            + "0" * 64
            + '"\n[operators]\nb = "sha256:'
            + "0" * 64
            + '"\n',
            "same hash",
        ),
        ("[participants\n", "not valid TOML"),
        ('participants = "x"\n', "must be a table"),
    ],
)
def test_read_auth_file_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as info:
        read_auth_file(path)
    assert str(path) in str(info.value)


# --- files -----------------------------------------------------------------------------------


def test_secrets_are_owner_only(pki: Path) -> None:
    secret = [p for p in pki.iterdir() if p.suffix in {".key", ".token"}]
    assert len(secret) == 9  # CA, coordinator, 3 clients, receipts; 3 tokens
    for path in secret:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    init_pki(tmp_path, ["alice"])
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        init_pki(tmp_path, ["alice"])
    assert (tmp_path / "ca.pem").read_bytes() == before
    init_pki(tmp_path, ["alice"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("participants", "operators", "message"),
    [
        (["alice", "alice"], ["admin"], "duplicate participant name 'alice'"),
        (["alice"], ["root", "root"], "duplicate operator name 'root'"),
        (["a b"], ["admin"], "bad participant name 'a b'"),
        (["alice"], [""], "bad operator name ''"),
    ],
)
def test_init_rejects_bad_names(
    tmp_path: Path, participants: list[str], operators: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        init_pki(tmp_path / "out", participants, operators)
    assert not (tmp_path / "out").exists()


# --- the CLI ---------------------------------------------------------------------------------


def _args(out: Path, participants: list[str], force: bool = False) -> argparse.Namespace:
    return argparse.Namespace(
        out=out,
        participants=participants,
        operators=["admin"],
        hosts=["localhost", "127.0.0.1"],
        days=30,
        force=force,
    )


def test_run_init_prints_paths_never_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_init(_args(tmp_path, ["alice", "bob"])) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "participant-bob.key") in printed
    assert "--auth-file auth.toml" in printed
    assert "--token-file participant-alice.token" in printed
    for token_file in tmp_path.glob("*.token"):
        assert read_token_file(token_file) not in printed


def test_run_init_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_init(_args(tmp_path, ["alice"])) == 0
    capsys.readouterr()
    assert run_init(_args(tmp_path, ["alice"])) == 2
    captured = capsys.readouterr()
    assert "already exists" in captured.err and captured.out == ""
    assert run_init(_args(tmp_path, ["no/slash"], force=True)) == 2
    assert "bad participant name" in capsys.readouterr().err


# --- mutual TLS with grpc --------------------------------------------------------------------

_METHOD = "/fused.test.Who/Am"


async def _who_am_i(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    certs = list(context.auth_context().get("x509_pem_cert", []))
    ident = identity_from_cert(certs[0]) if len(certs) == 1 else None
    return identity_uri(ident).encode() if ident is not None else b""


async def _call(pki: Path, client: grpc.ChannelCredentials, authority: str | None) -> bytes:
    def read(name: str) -> bytes:
        return (pki / name).read_bytes()

    server = grpc.aio.server()
    handlers = {"Am": grpc.unary_unary_rpc_method_handler(_who_am_i)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("fused.test.Who", handlers),)
    )
    creds = grpc.ssl_server_credentials(
        [(read("coordinator.key"), read("coordinator.pem"))],
        root_certificates=read("ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    options = [("grpc.ssl_target_name_override", authority)] if authority else []
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client, options) as channel:
            call = channel.unary_unary(_METHOD, None, None)  # raw bytes both ways
            reply: bytes = await call(b"", timeout=20)
            return reply
    finally:
        await server.stop(None)


@pytest.mark.parametrize("authority", [None, "localhost"])  # the IP SAN, then the DNS SAN
def test_mutual_tls_handshake_carries_identity(pki: Path, authority: str | None) -> None:
    client = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / "participant-alice.key").read_bytes(),
        (pki / "participant-alice.pem").read_bytes(),
    )
    reply = asyncio.run(_call(pki, client, authority))
    assert reply == identity_uri(ALICE).encode()


def test_handshake_without_client_cert_fails(pki: Path) -> None:
    client = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_call(pki, client, None))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_handshake_with_a_foreign_client_cert_fails(pki: Path, tmp_path: Path) -> None:
    init_pki(tmp_path, ["alice"])
    client = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (tmp_path / "participant-alice.key").read_bytes(),
        (tmp_path / "participant-alice.pem").read_bytes(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_call(pki, client, None))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
