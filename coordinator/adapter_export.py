"""An adapter version as a portable adapter file (`fusedctl export --adapter`): the positions
and values its unlearning changed, built from the stored base and merged weights, named by
the SHA-256 of the model files it applies to and produces (docs/ADAPTER_FILE.md)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import grpc

from fused.common.codecs.adapter_file import build_adapter_file
from fused.common.domain.records import ModelVersion, VersionKind
from fused.common.rpc.framing import encode_blob_chunk
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import RequestRefused
from fused.coordinator.versions import load_weights


async def adapter_file(artifacts: ArtifactStore, version: ModelVersion) -> bytes:
    """The file of an adapter version; FAILED_PRECONDITION for a version without one."""
    adapter = version.meta.adapter
    if version.kind is not VersionKind.ADAPTER or adapter is None:
        raise RequestRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{version.version_id} is a {version.kind.value} version without an adapter: "
            "export its weights instead",
        )
    base = await load_weights(artifacts, adapter.base_digest)
    merged = await load_weights(artifacts, version.digest)
    extra = {
        "version_id": version.version_id,
        "base_version": version.parent_id or "",
        "model": version.model,
        "layers": ",".join(adapter.layers),
    }
    return await asyncio.to_thread(
        build_adapter_file, base, merged, adapter.base_digest, version.digest, extra
    )


def file_chunks(data: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """`data` as pre-serialized BlobChunks named by its SHA-256 (the client checks it)."""
    digest = hashlib.sha256(data).hexdigest()
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield encode_blob_chunk(digest, offset, data[offset : offset + chunk_bytes], len(data))
