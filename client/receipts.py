"""Checking an unlearning receipt offline: its signature under the key the verifier trusts,
and that a model file is the one it names (`fusedctl verify-receipt`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fused.client.errors import LocalError
from fused.common.codecs.receipts import ReceiptError, load_public_key, verify_receipt


def verify_receipt_file(receipt: Path, public_key: Path, model: Path | None) -> dict[str, Any]:
    """The receipt's content once it verifies; LocalError saying what failed otherwise."""
    try:
        data = receipt.read_bytes()
        key = load_public_key(public_key)
        digest = hashlib.sha256(model.read_bytes()).hexdigest() if model is not None else None
        return verify_receipt(data, key, digest)
    except OSError as exc:
        raise LocalError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except ReceiptError as exc:
        raise LocalError(f"{receipt} does not verify: {exc}") from exc
