"""Receipts verify only as signed: every altered field, signature, key or model is refused
with a message naming the failed check."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fused.common.codecs.receipts import (
    FORMAT,
    MAX_RECEIPT_BYTES,
    ReceiptError,
    load_public_key,
    load_signing_key,
    new_signing_key,
    sign_receipt,
    verify_receipt,
)

KEY = Ed25519PrivateKey.generate()
CONTENT = {"format": FORMAT, "version_id": "m-1", "model_sha256": "ab" * 32, "fa_after": 0.01}


def edited(change: Callable[[dict[str, Any]], None]) -> bytes:
    envelope = json.loads(sign_receipt(CONTENT, KEY))
    change(envelope)
    return json.dumps(envelope).encode()


def flip_signature(e: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(e["signature"]))
    raw[0] ^= 1
    e["signature"] = base64.b64encode(bytes(raw)).decode()


CASES: list[tuple[str, bytes, str]] = [
    ("a field", edited(lambda e: e["receipt"].update(fa_after=0.5)), "does not match"),
    ("a field added", edited(lambda e: e["receipt"].update(x=1)), "does not match"),
    ("the signature", edited(flip_signature), "does not match"),
    ("the signature's encoding", edited(lambda e: e.update(signature="!!")), "base64"),
    ("the key id", edited(lambda e: e.update(key_id="0" * 64)), "names signing key 0000"),
    ("the algorithm", edited(lambda e: e.update(algorithm="rsa")), "algorithm 'rsa'"),
    ("an extra key", edited(lambda e: e.update(extra=1)), "exactly the keys"),
    ("not JSON", b"{receipt", "not a receipt"),
    ("a list", b"[]", "exactly the keys"),
    ("too large", b" " * (MAX_RECEIPT_BYTES + 1), "at most"),
]


@pytest.mark.parametrize(("what", "data", "error"), CASES, ids=[c[0] for c in CASES])
def test_tampering_is_refused(what: str, data: bytes, error: str) -> None:
    with pytest.raises(ReceiptError, match=error):
        verify_receipt(data, KEY.public_key())


def test_a_receipt_verifies_and_names_its_model() -> None:
    data = sign_receipt(CONTENT, KEY)
    assert data == sign_receipt(CONTENT, KEY)  # deterministic: every fetch is the same file
    assert verify_receipt(data, KEY.public_key(), "ab" * 32) == CONTENT
    with pytest.raises(ReceiptError, match="the model file has sha256 cd"):
        verify_receipt(data, KEY.public_key(), "cd" * 32)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ReceiptError, match="the trusted key is"):
        verify_receipt(data, other)


def test_another_format_is_refused() -> None:
    data = sign_receipt({**CONTENT, "format": "v0"}, KEY)
    with pytest.raises(ReceiptError, match="unknown receipt format 'v0'"):
        verify_receipt(data, KEY.public_key())


def test_keys_round_trip_through_files(tmp_path: Path) -> None:
    public_path = new_signing_key(tmp_path / "receipt.key")
    key = load_signing_key(tmp_path / "receipt.key")
    data = sign_receipt(CONTENT, key)
    assert verify_receipt(data, load_public_key(public_path)) == CONTENT
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ReceiptError, match="is not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
