"""Sending an artifact to the coordinator's control service (UploadArtifact): consecutive
chunks, the first naming the digest the whole must have. Free of torch, so light clients
(the load generator) can use it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fused.common.rpc.channels import CHUNK_BYTES
from fused.proto.v1 import common_pb2, control_pb2, control_pb2_grpc


def upload_artifact(
    stub: control_pb2_grpc.ControlServiceStub, data: bytes, timeout: float = 60.0
) -> str:
    """Store `data` on the coordinator; returns its sha256 digest."""
    reply: control_pb2.ArtifactInfo = stub.UploadArtifact(artifact_chunks(data), timeout=timeout)
    return reply.digest


def artifact_chunks(data: bytes) -> Iterator[common_pb2.BlobChunk]:
    """`data` as UploadArtifact's stream: consecutive chunks, the first naming the digest."""
    digest = hashlib.sha256(data).hexdigest()
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        piece = data[offset : offset + CHUNK_BYTES]
        yield common_pb2.BlobChunk(blob_id=digest, offset=offset, data=piece, total_size=len(data))
