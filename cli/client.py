"""What every fusedctl command shares: the client library's `Coordinator` from the common
flags, output as JSON or text, and the user-facing error."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from fused.client import Coordinator, LocalError
from fused.client.records import as_json
from fused.common.rpc.channels import TlsFiles
from fused.common.rpc.identity import read_token_file

DEFAULT_COORDINATOR = "127.0.0.1:50051"


class CliError(Exception):
    """A user-facing failure; printed without a traceback."""


def coordinator(args: argparse.Namespace) -> Coordinator:
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_ca else None
    try:
        token = read_token_file(args.token_file) if args.token_file else None
    except (OSError, ValueError) as exc:
        raise LocalError(f"cannot read the token: {exc}") from exc
    return Coordinator(args.coordinator, tls=tls, token=token)


def emit(args: argparse.Namespace, payload: Any, text: Callable[[], str]) -> None:
    """`payload` (records, or plain JSON values) as JSON with --json, else `text()`."""
    if args.json:
        print(json.dumps(as_json(payload), indent=2, sort_keys=True))
    else:
        print(text())
