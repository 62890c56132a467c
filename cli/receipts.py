"""`fusedctl receipt`, `receipt-key` and `verify-receipt`: an unlearning job's signed receipt,
the key that verifies it, and the offline check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fused.cli.client import CliError, coordinator, emit
from fused.client.receipts import verify_receipt_file


def add_receipt_parsers(sub: Any) -> None:
    fetch = sub.add_parser("receipt", help="the signed receipt of an unlearning version")
    fetch.add_argument("version")
    fetch.add_argument("--out", type=Path, required=True)
    fetch.set_defaults(func=cmd_receipt)
    key = sub.add_parser("receipt-key", help="the public key that verifies the receipts")
    key.add_argument("--out", type=Path, required=True)
    key.set_defaults(func=cmd_receipt_key)
    verify = sub.add_parser(
        "verify-receipt",
        help="check a receipt's signature offline, and that a model file is the one it names",
    )
    verify.add_argument("receipt", type=Path)
    verify.add_argument("--public-key", type=Path, required=True, help="the key you trust")
    verify.add_argument("--model", type=Path, default=None, help="the model file it must name")
    verify.set_defaults(func=cmd_verify_receipt)


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def cmd_receipt(args: argparse.Namespace) -> int:
    data = coordinator(args).receipt(args.version)
    _write(args.out, data)
    emit(args, {"path": str(args.out), "bytes": len(data)}, lambda: f"wrote {args.out}")
    return 0


def cmd_receipt_key(args: argparse.Namespace) -> int:
    pem, key_id = coordinator(args).receipt_key()
    _write(args.out, pem)
    emit(args, {"path": str(args.out), "key_id": key_id}, lambda: f"wrote {args.out} ({key_id})")
    return 0


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    content = verify_receipt_file(args.receipt, args.public_key, args.model)
    checked = " and names the model file" if args.model is not None else ""
    text = (
        f"valid: signed by {content['signed_by'][:16]}...{checked}; {content['version_id']} "
        f"forgets {content['request']['paradigm']} (RA {content['ra_after']}, FA "
        f"{content['fa_after']})"
    )
    emit(args, content, lambda: text)
    return 0
