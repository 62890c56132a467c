"""`fused-participant --forget-me` / `--forget-samples FILE`: this participant asks, with its
own credentials, to be forgotten or to have some of its samples forgotten, then exits. The
coordinator keeps the request pending until an operator decides (or approves it by
configuration); the request id lets the participant's owner follow it up."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from fused.common.rpc.channels import TlsFiles, create_channel
from fused.proto.v1 import participant_pb2, participant_pb2_grpc


def request_forgetting(
    coordinator: str,
    participant_id: str,
    sample_ids: Sequence[int],
    tls: TlsFiles | None,
    token: str | None,
) -> int:
    """Send the request; prints its id and status. Exit status 0 once the coordinator has it."""
    channel = create_channel(coordinator, tls, token)
    stub = participant_pb2_grpc.ParticipantServiceStub(channel)
    request = participant_pb2.ForgettingRequest(
        participant_id=participant_id, sample_ids=list(sample_ids)
    )
    try:
        reply = stub.RequestForgetting(request, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "error"
        print(f"fused-participant: {code}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    what = f"{len(sample_ids)} samples" if sample_ids else "this participant"
    job = f" (job {reply.job_id})" if reply.job_id else ""
    print(f"request {reply.request_id} to forget {what}: {reply.status}{job}")
    return 0
