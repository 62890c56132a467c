"""Resumable uploads: partial files kept per participant and digest until complete."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fused.coordinator.artifacts import ArtifactStore

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UploadSpool:
    """Bytes of unfinished uploads under root/<participant>/<digest>.part.

    A broken stream leaves its part file; the next stream for the same participant and
    digest must start where it ends. A complete file is checked and moved into the store.
    """

    def __init__(self, root: Path, artifacts: ArtifactStore) -> None:
        self._root = root
        self._artifacts = artifacts

    def _path(self, participant: str, digest: str) -> Path:
        if not _SAFE.match(participant):  # ids are validated at registration; be sure anyway
            raise ValueError(f"bad participant id {participant!r}")
        return self._root / participant / f"{digest}.part"

    def clear(self) -> int:
        """Remove every partial upload; returns how many (only when no task is open)."""
        parts = list(self._root.glob("*/*.part")) if self._root.exists() else []
        for part in parts:
            part.unlink(missing_ok=True)
        return len(parts)

    def offset(self, participant: str, digest: str) -> int:
        path = self._path(participant, digest)
        return path.stat().st_size if path.exists() else 0

    def open(self, participant: str, digest: str, total: int, offset: int) -> SpoolWriter:
        held = self.offset(participant, digest)
        if offset != held:
            raise ValueError(f"upload starts at offset {offset}; resume at offset {held}")
        path = self._path(participant, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SpoolWriter(self._artifacts, path, digest, total, held)


class SpoolWriter:
    def __init__(
        self, artifacts: ArtifactStore, path: Path, digest: str, total: int, held: int
    ) -> None:
        self._artifacts = artifacts
        self._path = path
        self._digest = digest
        self.total = total
        self.size = held
        self._file = path.open("ab")

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.size:
            raise ValueError(f"chunk at offset {offset}, expected {self.size}")
        if self.size + len(data) > self.total:
            raise ValueError(f"upload exceeds its declared size of {self.total} bytes")
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        """Keep what arrived, durably, for a later resume."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def finish(self) -> str:
        """Check the complete upload's digest and store it; a mismatch discards it."""
        self.close()
        try:
            return self._artifacts.adopt(self._path, self._digest)
        except ValueError:
            self.discard()
            raise

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)
