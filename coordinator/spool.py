"""The upload spool: part files of unfinished uploads, hashed as they are written, checked
and moved into the artifact store once complete."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
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
        self._active: set[Path] = set()  # parts an open stream is writing: never collected

    def _path(self, participant: str, digest: str) -> Path:
        if not _SAFE.match(participant):  # ids are validated at registration; be sure anyway
            raise ValueError(f"bad participant id {participant!r}")
        return self._root / participant / f"{digest}.part"

    def _parts(self, pattern: str = "*/*.part") -> list[Path]:
        return list(self._root.glob(pattern)) if self._root.exists() else []

    def clear(self) -> int:
        """Remove every partial upload no stream is writing; returns how many."""
        parts = [p for p in self._parts() if p not in self._active]
        for part in parts:
            part.unlink(missing_ok=True)
        return len(parts)

    def held_bytes(self, participant: str, but: str = "") -> int:
        """Bytes of the participant's part files no open stream writes, `but` that digest's."""
        skip = self._path(participant, but) if but else None
        total = 0
        for part in self._parts(f"{participant}/*.part"):
            if part in self._active or part == skip:
                continue
            try:
                total += part.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def offset(self, participant: str, digest: str) -> int:
        path = self._path(participant, digest)
        return path.stat().st_size if path.exists() else 0

    def open(self, participant: str, digest: str, total: int, offset: int) -> SpoolWriter:
        held = self.offset(participant, digest)
        if offset != held:
            raise ValueError(f"upload starts at offset {offset}; resume at offset {held}")
        path = self._path(participant, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = SpoolWriter(self._artifacts, path, digest, total, held, self._active.discard)
        self._active.add(path)
        return writer


class SpoolWriter:
    def __init__(
        self,
        artifacts: ArtifactStore,
        path: Path,
        digest: str,
        total: int,
        held: int,
        on_close: Callable[[Path], None] = lambda path: None,
    ) -> None:
        self._artifacts = artifacts
        self._path = path
        self._digest = digest
        self.total = total
        self.size = held
        self._on_close = on_close  # the spool stops protecting the part from collection
        self._file = path.open("ab")
        # Hashed as it arrives (a resumed part is read once here), so that finishing does
        # not read the whole upload back.
        self._hasher = hashlib.sha256()
        if held:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    self._hasher.update(block)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self.size:
            raise ValueError(f"chunk at offset {offset}, expected {self.size}")
        if self.size + len(data) > self.total:
            raise ValueError(f"upload exceeds its declared size of {self.total} bytes")
        self._file.write(data)
        self._hasher.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Keep what arrived, durably, for a later resume."""
        self._sync()
        self._on_close(self._path)

    def _sync(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def finish(self) -> str:
        """Check the complete upload's digest and store it; a mismatch discards it. The part
        stays protected from collection until it has moved (close() ends that)."""
        self._sync()
        try:
            return self._artifacts.adopt(self._path, self._digest, self._hasher.hexdigest())
        except ValueError:
            self.discard()
            raise

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)
