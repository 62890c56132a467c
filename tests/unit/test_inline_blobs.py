"""Artifacts sent inside task replies: once per agent session, read once for many agents."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fused.common.domain.tasks import TaskKind, TaskSpec
from fused.common.domain.train_config import TrainConfig
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.inline_blobs import InlineBlobs


class CountingStore(ArtifactStore):
    """A real store that counts its whole-artifact reads."""

    reads = 0

    def get_bytes(self, digest: str) -> bytes:
        self.reads += 1
        return super().get_bytes(digest)


def task(model: str) -> TaskSpec:
    return TaskSpec("t", "job-1", "train", 1, TaskKind.TRAIN, model, "mlp", 10, TrainConfig(), 0.0)


def test_agents_that_miss_together_share_one_read(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "artifacts")
    store.ensure()
    model = store.put_bytes(b"weights" * 100)
    store.reads = 0  # storing checks for a copy
    inline = InlineBlobs(store, max_bytes=1 << 20)

    async def round_of(agents: int) -> list[list[bytes]]:
        replies = [inline.for_task(f"p{i}", task(model)) for i in range(agents)]
        return [[b.data for b in blobs] for blobs in await asyncio.gather(*replies)]

    assert asyncio.run(round_of(50)) == [[b"weights" * 100]] * 50
    assert store.reads == 1
    assert asyncio.run(round_of(3)) == [[]] * 3  # these sessions hold it already
    inline.new_session("p1")  # a new registration is sent it again, from memory
    assert [b.data for b in asyncio.run(inline.for_task("p1", task(model)))] == [b"weights" * 100]
    assert store.reads == 1


def test_an_artifact_over_the_inline_size_is_not_sent(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "artifacts")
    store.ensure()
    model = store.put_bytes(b"x" * 2048)
    store.reads = 0
    inline = InlineBlobs(store, max_bytes=1024)
    for pid in ("p0", "p1"):
        assert asyncio.run(inline.for_task(pid, task(model))) == []
    assert store.reads == 0
    assert asyncio.run(inline.for_task("p2", task("0" * 64))) == []  # missing: DownloadBlob says
