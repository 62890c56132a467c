"""Artifacts a participant has already downloaded, by sha256: the base model of an unlearning
job is fetched once, not once per round."""

from __future__ import annotations

import hashlib
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

    def put_checked(self, digest: str, blob: bytes) -> bool:
        """Keep an artifact sent inline if its digest checks out; False when it does not
        (it is then downloaded by digest, which reports the mismatch if it persists)."""
        if hashlib.sha256(blob).hexdigest() != digest:
            return False
        self.put(digest, blob)
        return True
