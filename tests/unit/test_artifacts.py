from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fused.coordinator.artifacts import (
    ArtifactStore,
    CorruptArtifactError,
    MissingArtifactError,
)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    s = ArtifactStore(tmp_path / "artifacts")
    s.ensure()
    return s


def _tmp_files(store: ArtifactStore) -> list[Path]:
    tmp = store.root / "tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


def _corrupt(path: Path, index: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[index] ^= 0x01
    path.write_bytes(bytes(raw))


def test_constructor_does_no_io(tmp_path: Path) -> None:
    ArtifactStore(tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_round_trip_and_layout(store: ArtifactStore) -> None:
    data = b"model weights" * 1000
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (store.root / "sha256" / digest[:2] / digest).read_bytes() == data
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert store.get_bytes(digest) == data
    assert b"".join(store.iter_chunks(digest, 777)) == data
    assert all(len(c) <= 777 for c in store.iter_chunks(digest, 777))
    assert _tmp_files(store) == []


def test_empty_artifact(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"")
    assert store.get_bytes(digest) == b""
    assert list(store.iter_chunks(digest, 10)) == []


def test_put_without_ensure_creates_dirs(tmp_path: Path) -> None:
    s = ArtifactStore(tmp_path / "lazy")
    digest = s.put_bytes(b"x")
    assert s.get_bytes(digest) == b"x"


def test_put_is_idempotent(store: ArtifactStore) -> None:
    d1 = store.put_bytes(b"same")
    path = store.path_for(d1)
    mtime = path.stat().st_mtime_ns
    d2 = store.put_bytes(b"same")
    assert d1 == d2
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert store.get_bytes(d1) == b"same"
    assert _tmp_files(store) == []


def test_put_repairs_a_corrupt_copy(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"precious")
    _corrupt(store.path_for(digest))
    assert store.put_bytes(b"precious") == digest
    assert store.get_bytes(digest) == b"precious"


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls


def test_a_round_upload_is_stored_without_fsync(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_fsyncs(monkeypatch)
    digest = store.put_bytes(b"an update", durable=False)
    assert store.get_bytes(digest) == b"an update"
    assert calls == []
    # the same content stored durably later (an aggregate equal to the one upload): synced
    assert store.put_bytes(b"an update") == digest
    assert len(calls) == 2  # the file and its directory
    assert _tmp_files(store) == []


def test_missing_artifact(store: ArtifactStore) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(digest)
    with pytest.raises(MissingArtifactError):
        store.get_bytes(digest)
    with pytest.raises(MissingArtifactError):
        store.size(digest)
    with pytest.raises(MissingArtifactError):
        store.iter_chunks(digest, 10)
    assert issubclass(MissingArtifactError, KeyError)


def test_corruption_detected(store: ArtifactStore) -> None:
    data = os.urandom(10_000)
    digest = store.put_bytes(data)
    _corrupt(store.path_for(digest), index=5_000)
    with pytest.raises(CorruptArtifactError, match=digest):
        store.get_bytes(digest)
    chunks = store.iter_chunks(digest, 1024)
    received = []
    with pytest.raises(CorruptArtifactError):
        for chunk in chunks:
            received.append(chunk)
    assert len(b"".join(received)) == len(data)  # raised only after the last chunk
    assert issubclass(CorruptArtifactError, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 64,
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "../" + "0" * 61,
        "00/" + "0" * 61,
        "0" * 63 + "\n",
        " " + "0" * 63,
    ],
)
def test_bad_digests_rejected(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        store.get_bytes(bad)
    with pytest.raises(ValueError, match="digest"):
        store.exists(bad)
    with pytest.raises(ValueError, match="digest"):
        store.size(bad)
    with pytest.raises(ValueError, match="digest"):
        store.iter_chunks(bad, 10)


def test_iter_chunks_rejects_bad_chunk_size(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"x")
    with pytest.raises(ValueError):
        store.iter_chunks(digest, 0)


def test_writer_commit(store: ArtifactStore) -> None:
    data = os.urandom(5000)
    writer = store.begin_write(max_bytes=5000)
    for i in range(0, len(data), 1000):
        writer.write(data[i : i + 1000])
    assert len(_tmp_files(store)) == 1  # in progress
    digest = writer.commit(expected_digest=hashlib.sha256(data).hexdigest())
    assert digest == hashlib.sha256(data).hexdigest()
    assert writer.digest == digest
    assert store.get_bytes(digest) == data
    assert _tmp_files(store) == []
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError):
        writer.commit()


def test_writer_commit_existing_content(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"dup")
    with store.begin_write(max_bytes=10) as writer:
        writer.write(b"dup")
        assert writer.commit() == digest
    assert store.get_bytes(digest) == b"dup"
    assert _tmp_files(store) == []


def test_writer_limit(store: ArtifactStore) -> None:
    writer = store.begin_write(max_bytes=10)
    writer.write(b"0123456789")  # exactly the limit is fine
    with pytest.raises(ValueError, match="limit of 10 bytes"):
        writer.write(b"x")
    assert _tmp_files(store) == []
    with pytest.raises(ValueError):
        writer.commit()


def test_writer_digest_mismatch_leaves_nothing(store: ArtifactStore) -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    writer = store.begin_write(max_bytes=100)
    writer.write(b"payload")
    with pytest.raises(ValueError, match="mismatch"):
        writer.commit(expected_digest=wrong)
    assert _tmp_files(store) == []
    assert not store.exists(hashlib.sha256(b"payload").hexdigest())
    assert not store.exists(wrong)


def test_writer_invalid_expected_digest(store: ArtifactStore) -> None:
    writer = store.begin_write(max_bytes=100)
    writer.write(b"payload")
    with pytest.raises(ValueError, match="digest"):
        writer.commit(expected_digest="../../etc/passwd")
    assert _tmp_files(store) == []


def test_writer_abort_and_context_manager(store: ArtifactStore) -> None:
    writer = store.begin_write(max_bytes=100)
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # idempotent
    assert _tmp_files(store) == []
    assert not store.exists(hashlib.sha256(b"partial").hexdigest())

    with pytest.raises(RuntimeError), store.begin_write(max_bytes=100) as w:
        w.write(b"partial")
        raise RuntimeError("upload interrupted")
    assert _tmp_files(store) == []

    with store.begin_write(max_bytes=100) as w:
        w.write(b"never committed")
    assert _tmp_files(store) == []
    assert not store.exists(hashlib.sha256(b"never committed").hexdigest())


def test_ensure_removes_stale_temp_files_but_not_active_ones(store: ArtifactStore) -> None:
    stale = store.root / "tmp" / "artifact-crashed.part"
    stale.write_bytes(b"left over from a crash")
    with store.begin_write(max_bytes=100) as writer:
        writer.write(b"in flight")
        store.ensure()
        assert not stale.exists()
        assert len(_tmp_files(store)) == 1
        digest = writer.commit()
    assert store.get_bytes(digest) == b"in flight"
    assert _tmp_files(store) == []
