"""Small artifacts sent inside task replies, so that a round needs no DownloadBlob call.

Each agent session is sent a given artifact at most once: the agent keeps what it received
in its cache (an unlearning job's base model is sent once, not once per round), and asks by
DownloadBlob for anything it no longer holds. A new registration starts a new session.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from fused.common.domain.tasks import TaskSpec
from fused.coordinator.artifacts import ArtifactStore, CorruptArtifactError, MissingArtifactError
from fused.proto.v1 import common_pb2

REMEMBERED_PER_AGENT = 16  # digests one session was sent; older ones may be sent again
CACHE_BYTES = 64 << 20  # artifacts held in memory: one round's model is read once, not per agent


class InlineBlobs:
    def __init__(self, artifacts: ArtifactStore, max_bytes: int) -> None:
        self._artifacts = artifacts
        self.max_bytes = max_bytes  # 0: nothing travels inline
        self._sent: dict[str, deque[str]] = {}
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._loading: dict[str, asyncio.Future[bytes | None]] = {}
        self._too_big: set[str] = set()

    def new_session(self, pid: str) -> None:
        self._sent.pop(pid, None)

    async def for_task(self, pid: str, task: TaskSpec) -> list[common_pb2.InlineBlob]:
        """The task's artifacts that fit inline and this session was not sent yet."""
        named = [task.model_blob_id, task.adapter.values_blob_id if task.adapter else ""]
        sent = self._sent.setdefault(pid, deque(maxlen=REMEMBERED_PER_AGENT))
        blobs: list[common_pb2.InlineBlob] = []
        for digest in dict.fromkeys(d for d in named if d and d not in sent):
            data = await self._small(digest)
            if data is not None:
                blobs.append(common_pb2.InlineBlob(blob_id=digest, data=data))
                sent.append(digest)
        return blobs

    async def _small(self, digest: str) -> bytes | None:
        """The artifact's bytes when it fits inline; None when it does not, or when it is
        missing or corrupt (the agent's DownloadBlob then gets the error that says so). A
        round's thousand replies that miss the cache together wait for one read."""
        data = self._cache.get(digest)
        if data is not None:
            self._cache.move_to_end(digest)
            return data
        if digest in self._too_big:
            return None
        loading = self._loading.get(digest)
        if loading is None:
            loading = self._loading[digest] = asyncio.ensure_future(self._load(digest))
            loading.add_done_callback(lambda _: self._loading.pop(digest, None))
        return await asyncio.shield(loading)  # one caller's cancellation stops no one's read

    async def _load(self, digest: str) -> bytes | None:
        try:
            if self._artifacts.size(digest) > self.max_bytes:
                self._too_big.add(digest)  # content-addressed: its size never changes
                return None
            data = await asyncio.to_thread(self._artifacts.get_bytes, digest)  # digest checked
        except (MissingArtifactError, CorruptArtifactError):
            return None
        self._remember(digest, data)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        self._cache[digest] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= len(evicted)
