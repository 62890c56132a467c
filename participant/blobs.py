"""Artifacts a participant has already downloaded, by sha256: the base model of an unlearning
job is fetched once, not once per round."""

from __future__ import annotations

from collections import OrderedDict


class BlobCache:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, digest: str) -> bytes | None:
        blob = self._blobs.get(digest)
        if blob is not None:
            self._blobs.move_to_end(digest)
        return blob

    def put(self, digest: str, blob: bytes) -> None:
        if len(blob) > self._max_bytes or digest in self._blobs:
            return
        self._blobs[digest] = blob
        self._size += len(blob)
        while self._size > self._max_bytes:
            _, evicted = self._blobs.popitem(last=False)
            self._size -= len(evicted)
