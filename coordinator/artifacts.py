"""Content-addressed artifact directory with atomic, durable writes.

Layout::

    root/sha256/<first two hex digits>/<64-hex sha256 digest>   finished artifacts
    root/tmp/                                                   partial writes

A file only ever appears under its digest through `os.replace` of a fully written and
fsynced temp file (followed by an fsync of the directory), so readers never see partial
content. Reads re-hash the content and raise `CorruptArtifactError` on a mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = [
    "ArtifactStore",
    "ArtifactWriter",
    "CorruptArtifactError",
    "MissingArtifactError",
    "validate_digest",
]

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20


class CorruptArtifactError(ValueError):
    """Stored content does not hash to its digest."""


class MissingArtifactError(KeyError):
    """No artifact with that digest is stored."""


def validate_digest(digest: str) -> str:
    """Return `digest` if it is 64 lowercase hex characters, else raise ValueError."""
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise ValueError(f"invalid sha256 digest {digest!r}: need 64 lowercase hex characters")
    return digest


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What changes when a file is rewritten: size, modification time, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._active: set[Path] = set()  # temp files of open writers; ensure() keeps them
        self._verified: dict[str, tuple[int, int, int]] = {}  # digest -> stamp when hashed
        self._collections = 0  # collections under way (remove_unreferenced)
        self._touched: set[str] = set()  # digests stored or looked up meanwhile: kept

    # ----------------------------------------------------------------- setup

    def ensure(self) -> None:
        """Create the directories and remove temp files left behind by earlier runs."""
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        with self._lock:  # held throughout so a writer cannot start between scan and unlink
            for entry in self._tmp.iterdir():
                if entry in self._active:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_dir() and not entry.is_symlink():
                        continue
                    entry.unlink()

    def digests(self) -> list[str]:
        """Every stored artifact."""
        return [p.name for p in self._objects.glob("??/*") if _DIGEST_RE.fullmatch(p.name)]

    def remove(self, digest: str) -> int:
        """Delete an artifact; returns the bytes freed (0 if it was not there)."""
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        self._verified.pop(digest, None)
        return size

    def start_collection(self) -> None:
        """Call where no job runs, having read what is referenced: from now until its
        remove_unreferenced ends, a digest stored or found by exists() is never removed by it
        (a job that starts meanwhile may store content a collection was about to delete)."""
        with self._lock:
            self._collections += 1

    def remove_unreferenced(self, keep: set[str]) -> tuple[int, int]:
        """Delete each artifact not in `keep` nor touched since start_collection (which must
        come first); returns (artifacts, bytes) freed. Runs in any thread."""
        removed = freed = 0
        try:
            for digest in self.digests():
                if digest in keep:
                    continue
                with self._lock:  # a writer touches under it before it checks the file
                    if digest in self._touched:
                        continue
                    freed += self.remove(digest)
                removed += 1
        finally:
            with self._lock:
                self._collections -= 1
                if not self._collections:
                    self._touched.clear()
        return removed, freed

    def _touch(self, digest: str) -> None:
        with self._lock:
            if self._collections:
                self._touched.add(digest)

    def path_for(self, digest: str) -> Path:
        validate_digest(digest)
        return self._objects / digest[:2] / digest

    # ----------------------------------------------------------------- reads

    def exists(self, digest: str) -> bool:
        """Whether it is stored; a collection under way keeps it (the caller may rely on it)."""
        path = self.path_for(digest)
        self._touch(digest)
        return path.is_file()

    def size(self, digest: str) -> int:
        path = self.path_for(digest)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise MissingArtifactError(digest) from None

    def get_bytes(self, digest: str) -> bytes:
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingArtifactError(digest) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise CorruptArtifactError(
                f"artifact {digest} is corrupt: its content hashes to {actual}"
            )
        return data

    def verify(self, digest: str) -> None:
        """Raise MissingArtifactError or CorruptArtifactError unless the file matches its
        digest; a file verified since this process started and unchanged since is trusted
        without reading it (every participant downloads the same model each round)."""
        path = self.path_for(digest)
        try:
            stamp = _stamp(path.stat())
        except FileNotFoundError:
            raise MissingArtifactError(digest) from None
        if self._verified.get(digest) != stamp:
            for _ in self._iter_chunks(path, digest, 1 << 20):
                pass

    def iter_chunks(self, digest: str, chunk_size: int) -> Iterator[bytes]:
        """Yield the content in chunks; raises CorruptArtifactError after the last chunk if the
        content does not match the digest (consumers must discard what they received)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        path = self.path_for(digest)
        if not path.is_file():
            raise MissingArtifactError(digest)
        return self._iter_chunks(path, digest, chunk_size)

    def _iter_chunks(self, path: Path, digest: str, chunk_size: int) -> Iterator[bytes]:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise MissingArtifactError(digest) from None
        with f:
            stamp = _stamp(os.fstat(f.fileno()))
            # A file verified since this process started, unchanged since, is not hashed
            # again: every participant downloads the same model each round.
            h = None if self._verified.get(digest) == stamp else hashlib.sha256()
            while chunk := f.read(chunk_size):
                if h is not None:
                    h.update(chunk)
                yield chunk
        if h is None:
            return
        actual = h.hexdigest()
        if actual != digest:
            raise CorruptArtifactError(
                f"artifact {digest} is corrupt: its content hashes to {actual}"
            )
        self._verified[digest] = stamp

    # ----------------------------------------------------------------- writes

    def put_bytes(self, data: bytes, durable: bool = True) -> str:
        """Store `data`; return its sha256 hex digest. Storing existing content is a no-op.
        `durable=False` skips the fsyncs, for what a crash makes worthless anyway (a round's
        uploads: the round is redone); a copy a power failure damages fails its digest check
        on every read and is replaced by the next put."""
        digest = hashlib.sha256(data).hexdigest()
        self._touch(digest)
        if self._is_intact(digest):
            if durable:  # the copy there may have been put without fsync
                _fsync_file(self.path_for(digest))
            return digest
        fd, tmp_name = self._mkstemp()
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            self._install(tmp, digest, durable)
        finally:
            self._forget(tmp)
        return digest

    def adopt(self, path: Path, expected_digest: str, hashed: str | None = None) -> str:
        """Move a complete file (on the same file system) into the store after checking its
        sha256 (`hashed`: the digest its writer computed while writing it, which saves
        reading it again); raises ValueError on a mismatch, leaving the file where it was."""
        validate_digest(expected_digest)
        digest = hashed or _file_digest(path)
        if digest != expected_digest:
            raise ValueError(f"content has sha256 {digest}, not the declared {expected_digest}")
        self._touch(digest)
        if self._is_intact(digest):
            path.unlink()
            return digest
        self._install(path, digest)
        return digest

    def begin_write(self, max_bytes: int) -> ArtifactWriter:
        """Start a streaming write of at most `max_bytes` bytes."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
        fd, tmp_name = self._mkstemp()
        return ArtifactWriter(self, Path(tmp_name), os.fdopen(fd, "wb"), max_bytes)

    # ----------------------------------------------------------------- internals

    def _mkstemp(self) -> tuple[int, str]:
        self._tmp.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd, name = tempfile.mkstemp(prefix="artifact-", suffix=".part", dir=self._tmp)
            self._active.add(Path(name))
        return fd, name

    def _forget(self, tmp: Path) -> None:
        """Drop a temp file (if still there) and stop protecting it from ensure()."""
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with self._lock:
            self._active.discard(tmp)

    def _is_intact(self, digest: str) -> bool:
        """True if the artifact exists and its content matches the digest."""
        try:
            self.get_bytes(digest)
        except (MissingArtifactError, CorruptArtifactError):
            return False
        return True

    def _install(self, tmp: Path, digest: str, durable: bool = True) -> None:
        """Atomically move a complete (fsynced, if durable) temp file into place (replacing a
        corrupt copy)."""
        target = self.path_for(digest)
        self._touch(digest)  # ArtifactWriter.commit comes here directly
        if self._is_intact(digest):
            return  # the caller's _forget() removes the temp file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


class ArtifactWriter:
    """A streaming upload into an `ArtifactStore`; use as a context manager or call
    `commit()` / `abort()` explicitly. Leaving the `with` block without committing aborts."""

    def __init__(self, store: ArtifactStore, tmp: Path, file: BinaryIO, max_bytes: int) -> None:
        self._store = store
        self._tmp = tmp
        self._file: BinaryIO | None = file
        self._hash = hashlib.sha256()
        self.max_bytes = max_bytes
        self.bytes_written = 0
        self.digest: str | None = None  # set by a successful commit()

    @property
    def closed(self) -> bool:
        return self._file is None

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            state = "committed" if self.digest is not None else "aborted"
            raise ValueError(f"artifact writer is already {state}")
        return self._file

    def write(self, chunk: bytes) -> None:
        f = self._open_file()
        if self.bytes_written + len(chunk) > self.max_bytes:
            total = self.bytes_written + len(chunk)
            self.abort()
            raise ValueError(f"artifact exceeds the limit of {self.max_bytes} bytes ({total}+)")
        f.write(chunk)
        self._hash.update(chunk)
        self.bytes_written += len(chunk)

    def commit(self, expected_digest: str | None = None) -> str:
        """Finish the write and return the digest; on a digest mismatch nothing is kept."""
        f = self._open_file()
        if expected_digest is not None:
            try:
                validate_digest(expected_digest)
            except ValueError:
                self.abort()
                raise
        digest = self._hash.hexdigest()
        if expected_digest is not None and digest != expected_digest:
            self.abort()
            raise ValueError(f"artifact digest mismatch: expected {expected_digest}, got {digest}")
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._file = None
            self._store._install(self._tmp, digest)
        except BaseException:
            self.abort()
            raise
        self._store._forget(self._tmp)
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Discard the partial write; a no-op once committed or aborted."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
        if self.digest is None:
            self._store._forget(self._tmp)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.digest is None:
            self.abort()
