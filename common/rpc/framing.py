"""BlobChunk messages written by hand: the protobuf wire format of fused.v1.BlobChunk,
built with one copy of the data instead of protobuf's slower serialization of large bytes.

The output equals `BlobChunk(...).SerializeToString()` byte for byte (a unit test checks).
"""

from __future__ import annotations

from fused.common.codecs.varint import varint


def encode_blob_chunk(blob_id: str, offset: int, data: bytes, total_size: int) -> bytes:
    """Fields 1 (blob_id), 2 (offset), 3 (data), 4 (total_size); proto3 omits defaults."""
    parts: list[bytes] = []
    if blob_id:
        raw = blob_id.encode()
        parts += [b"\x0a", varint(len(raw)), raw]
    if offset:
        parts += [b"\x10", varint(offset)]
    if data:
        parts += [b"\x1a", varint(len(data)), data]
    if total_size:
        parts += [b"\x20", varint(total_size)]
    return b"".join(parts)
