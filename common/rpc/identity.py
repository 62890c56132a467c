"""Who is calling: identities in client certificates and bearer tokens.

A participant or operator is named by a URI SubjectAlternativeName "fused://<role>/<name>" in its
client certificate, or by a bearer token whose SHA-256 hash sits in the coordinator's auth file.
Issuing certificates and tokens is the operator's business: `fused.cli.pki`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

PARTICIPANT = "participant"
OPERATOR = "operator"
ROLES = (PARTICIPANT, OPERATOR)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_PATTERN = _NAME.pattern
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_SCHEME = "fused://"
_TABLES = ("participants", "operators")


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Identity:
    role: str
    name: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not valid_name(self.name):
            raise ValueError(f"bad {self.role} name {self.name!r}: want {_NAME.pattern}")


def identity_uri(identity: Identity) -> str:
    return f"{_SCHEME}{identity.role}/{identity.name}"


def _parse_uri(uri: str) -> Identity | None:
    if not uri.startswith(_SCHEME):
        return None
    role, _, name = uri[len(_SCHEME) :].partition("/")
    if role not in ROLES or not valid_name(name):
        return None
    return Identity(role, name)


def identity_from_cert(pem: bytes) -> Identity | None:
    """The identity in a PEM certificate's fused:// URI SAN; None if absent, ambiguous or bad.

    No signature check here: pass only a peer certificate that the TLS handshake verified.
    """
    if not isinstance(pem, bytes):  # lru_cache needs hashable input; bytearray etc. are not
        return None
    return _identity_from_cert_cached(pem)


@functools.lru_cache(maxsize=4096)  # the same peer certificate arrives with every call
def _identity_from_cert_cached(pem: bytes) -> Identity | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except Exception:  # untrusted bytes: any parse failure just means "no identity"
        return None
    fused = [u for u in uris if u.startswith(_SCHEME)]
    return _parse_uri(fused[0]) if len(fused) == 1 else None


# --- bearer tokens ---------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_token_file(path: Path) -> str:
    """A token file's token, without the trailing newline that init_pki writes."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path}: token file is empty")
    return token


@dataclass
class AuthFile:
    participants: dict[str, str]  # name -> "sha256:<64 hex>"
    operators: dict[str, str]

    def lookup(self, token: str) -> Identity | None:
        """Who owns this bearer token. A dict lookup on the SHA-256 of the token: the hash is
        what leaks through timing, and it reveals nothing about any token."""
        return self._by_hash.get(hash_token(token))

    @functools.cached_property
    def _by_hash(self) -> dict[str, Identity]:
        tables = ((PARTICIPANT, self.participants), (OPERATOR, self.operators))
        return {digest: Identity(role, name) for role, t in tables for name, digest in t.items()}


def read_auth_file(path: Path) -> AuthFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise ValueError(
            f"{path}: unknown table {unknown[0]!r}; expected [participants]/[operators]"
        )
    tables = {key: _read_table(path, key, data.get(key, {})) for key in _TABLES}
    _check_unique_hashes(path, tables)
    return AuthFile(participants=tables["participants"], operators=tables["operators"])


def _read_table(path: Path, key: str, table: object) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ValueError(f'{path}: [{key}] must be a table of name = "sha256:<hex>"')
    out: dict[str, str] = {}
    for name, digest in table.items():
        if not valid_name(name):
            raise ValueError(f"{path}: [{key}] bad name {name!r}: want {_NAME.pattern}")
        if not isinstance(digest, str) or _HASH.fullmatch(digest) is None:
            raise ValueError(f'{path}: [{key}] {name}: hash must be "sha256:<64 lowercase hex>"')
        out[name] = digest
    return out


def _check_unique_hashes(path: Path, tables: dict[str, dict[str, str]]) -> None:
    # One token must never authenticate two identities.
    owner: dict[str, str] = {}
    for key, table in tables.items():
        for name, digest in table.items():
            where = f"[{key}] {name}"
            if digest in owner:
                raise ValueError(f"{path}: {where} has the same hash as {owner[digest]}")
            owner[digest] = where
