"""Signed unlearning receipts (`fused-receipt-v1`): what an unlearning job did, signed with the
coordinator's Ed25519 key, checkable offline against the model file it names.

A receipt file is one JSON object: ``{"receipt": {...}, "algorithm": "ed25519", "key_id":
<sha256 of the raw public key>, "signature": <base64>}``. The signature covers the canonical
JSON of ``receipt`` (sorted keys, no spaces, UTF-8). Verification pins the public key the
verifier trusts (a file the operator distributes), never one carried by the receipt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "fused-receipt-v1"
ALGORITHM = "ed25519"
MAX_RECEIPT_BYTES = 1 << 20
_ENVELOPE_KEYS = {"receipt", "algorithm", "key_id", "signature"}


class ReceiptError(ValueError):
    """A receipt that does not verify; the message says which check failed."""


def canonical(content: Mapping[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_receipt(content: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The receipt file's bytes (Ed25519 is deterministic: the same content, the same file)."""
    signature = key.sign(canonical(content))
    envelope = {
        "receipt": dict(content),
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }
    return json.dumps(envelope, sort_keys=True, indent=2).encode() + b"\n"


def verify_receipt(
    data: bytes, public: Ed25519PublicKey, model_sha256: str | None = None
) -> dict[str, Any]:
    """The receipt's content, once its signature verifies under `public` and (given) the model
    file's SHA-256 is the one it names. Raises ReceiptError."""
    envelope = _envelope(data)
    expected = key_id(public)
    if envelope["key_id"] != expected:
        raise ReceiptError(
            f"the receipt names signing key {str(envelope['key_id'])[:16]}..., the trusted "
            f"key is {expected[:16]}..."
        )
    try:
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ReceiptError("the signature is not valid base64") from None
    content = envelope["receipt"]
    try:
        public.verify(signature, canonical(content))
    except InvalidSignature:
        raise ReceiptError(
            "the signature does not match the receipt: it was altered after signing, or "
            "signed by another key"
        ) from None
    if content.get("format") != FORMAT:
        raise ReceiptError(f"unknown receipt format {content.get('format')!r}")
    if model_sha256 is not None and content.get("model_sha256") != model_sha256:
        raise ReceiptError(
            f"the model file has sha256 {model_sha256}; the receipt names "
            f"{content.get('model_sha256')}"
        )
    return dict(content)


def _envelope(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptError(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes; this is {len(data)}")
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReceiptError(f"not a receipt: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != _ENVELOPE_KEYS:
        raise ReceiptError(f"a receipt file has exactly the keys {sorted(_ENVELOPE_KEYS)}")
    if envelope["algorithm"] != ALGORITHM or not isinstance(envelope["receipt"], dict):
        raise ReceiptError(f"unsupported receipt: algorithm {envelope['algorithm']!r}")
    if not isinstance(envelope["key_id"], str) or not isinstance(envelope["signature"], str):
        raise ReceiptError("key_id and signature must be strings")
    return envelope


def new_signing_key(path: Path) -> Path:
    """A new Ed25519 key: the private PEM at `path` (mode 0600), the public one beside it
    (`.pub`). Returns the public key's path."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(private)
    public_path = path.with_suffix(".pub")
    public_path.write_bytes(public_pem(key.public_key()))
    return public_path


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise ReceiptError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReceiptError(f"{path} is not an Ed25519 public key")
    return key
