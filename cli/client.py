"""What every fusedctl command shares: the control service's stub from the common flags,
output as JSON or text, and the user-facing error."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from fused.common.rpc.channels import TlsFiles, create_channel
from fused.common.rpc.identity import read_token_file
from fused.proto.v1 import control_pb2_grpc

DEFAULT_COORDINATOR = "127.0.0.1:50051"


class CliError(Exception):
    """A user-facing failure; printed without a traceback."""


def control_stub(args: argparse.Namespace) -> control_pb2_grpc.ControlServiceStub:
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_ca else None
    try:
        token = read_token_file(args.token_file) if args.token_file else None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the token: {exc}") from exc
    return control_pb2_grpc.ControlServiceStub(create_channel(args.coordinator, tls, token))


def emit(args: argparse.Namespace, payload: Any, text: Callable[[], str]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True) if args.json else text())


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)
