"""Issuing identities: a development CA, certificates, bearer tokens and the auth file
(`fusedctl certs init`; the load benchmark and tests use it too)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fused.common.codecs.receipts import new_signing_key
from fused.common.rpc.identity import (
    NAME_PATTERN,
    OPERATOR,
    PARTICIPANT,
    AuthFile,
    Identity,
    hash_token,
    identity_uri,
    valid_name,
)

_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_AUTH_HEADER = (
    "# Written by `fusedctl certs init`. Holds SHA-256 hashes of bearer tokens, never the tokens.\n"
)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_auth_file(path: Path, auth: AuthFile) -> None:
    lines = [_AUTH_HEADER]
    for key, table in (("participants", auth.participants), ("operators", auth.operators)):
        lines.append(f"[{key}]\n")
        lines.extend(f'{_toml_key(name)} = "{digest}"\n' for name, digest in table.items())
    _write_atomic(path, "".join(lines).encode("utf-8"), _SECRET_MODE)


def _toml_key(name: str) -> str:
    # A bare key with a dot would be a dotted (nested) key; quote those.
    if not valid_name(name):
        raise ValueError(f"bad name {name!r}: want {NAME_PATTERN}")
    return f'"{name}"' if "." in name else name


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temp file created with `mode`, then rename: no window with loose perms."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- development PKI -------------------------------------------------------------------------


def init_pki(
    out: Path,
    participants: Sequence[str],
    operators: Sequence[str] = ("admin",),
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 365,
    force: bool = False,
) -> list[Path]:
    """Make a CA, a coordinator server cert, client certs and tokens for everyone, and the
    coordinator's receipt-signing key, in `out`."""
    identities = _identities(participants, operators)
    sans = _host_sans(hosts)
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if (out / "ca.pem").exists() and not force:
        raise ValueError(f"{out / 'ca.pem'} already exists; pass --force to replace this PKI")
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_cert = _ca_cert(ca_key, days)
    written = _write_pair(out / "ca", ca_cert, ca_key)
    key = _new_key()
    cert = _leaf(ca_cert, ca_key, "fused coordinator", key, sans, _SERVER_AUTH, days)
    written += _write_pair(out / "coordinator", cert, key)
    tokens: dict[Identity, str] = {}
    for ident in identities:
        key = _new_key()
        uri: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(ident))]
        cert = _leaf(ca_cert, ca_key, ident.name, key, uri, _CLIENT_AUTH, days)
        written += _write_pair(out / _stem(ident), cert, key)
        tokens[ident] = new_token()
    written.append(_write_auth(out / "auth.toml", tokens))
    receipt_key = out / "receipt.key"  # the coordinator signs unlearning receipts with it
    written += [receipt_key, new_signing_key(receipt_key)]
    return written + _write_tokens(out, tokens)


def _identities(participants: Sequence[str], operators: Sequence[str]) -> list[Identity]:
    result: list[Identity] = []
    for role, names in ((PARTICIPANT, participants), (OPERATOR, operators)):
        if isinstance(names, str):
            raise ValueError(f"{role} names must be a list, not the string {names!r}")
        for name in names:
            if not valid_name(name):
                raise ValueError(f"bad {role} name {name!r}: want {NAME_PATTERN}")
            if Identity(role, name) in result:
                raise ValueError(f"duplicate {role} name {name!r}")
            result.append(Identity(role, name))
    return result


def _host_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        if not host:
            raise ValueError("empty host name in hosts")
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    if not sans:
        raise ValueError("the coordinator certificate needs at least one host")
    return sans


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(stem: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    cert_path, key_path = stem.with_name(f"{stem.name}.pem"), stem.with_name(f"{stem.name}.key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)
    _write_atomic(key_path, key_pem, _SECRET_MODE)
    return [cert_path, key_path]


def _write_auth(path: Path, tokens: dict[Identity, str]) -> Path:
    auth = AuthFile(participants={}, operators={})
    for ident, token in tokens.items():
        table = auth.participants if ident.role == PARTICIPANT else auth.operators
        table[ident.name] = hash_token(token)
    write_auth_file(path, auth)
    return path


def _write_tokens(out: Path, tokens: dict[Identity, str]) -> list[Path]:
    paths = []
    for ident, token in tokens.items():
        path = out / f"{_stem(ident)}.token"
        _write_atomic(path, f"{token}\n".encode(), _SECRET_MODE)
        paths.append(path)
    return paths


def _stem(ident: Identity) -> str:
    return f"{ident.role}-{ident.name}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_cert(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    name = "fused development CA"
    return (
        _builder(name, _name(name), key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> x509.Certificate:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
