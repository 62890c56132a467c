"""The committed protobuf/gRPC code and stubs are exactly what scripts/gen_protos.sh generates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("proto/v1")  # generated through the import root: OUT/fused/proto/v1
GENERATED_DIR = Path("fused/proto/v1")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generated(base: Path) -> dict[str, bytes]:
    """Generated files under base/fused/proto/v1 (the repository's proto/v1), by name."""
    folder = base / GENERATED_DIR
    return {p.name: p.read_bytes() for suffix in SUFFIXES for p in folder.glob("*" + suffix)}


def _stale(fresh: dict[str, bytes], committed: dict[str, bytes]) -> list[str]:
    """Repository paths that differ, are missing, or are left over."""
    names = set(fresh) | set(committed)
    return sorted(str(PROTO_DIR / n) for n in names if fresh.get(n) != committed.get(n))


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"gen_protos.sh failed:\n{result.stdout}\n{result.stderr}"

    fresh = _generated(out)
    protos = sorted(p.stem for p in (ROOT / PROTO_DIR).glob("*.proto"))
    assert protos, "no .proto files found"
    # every kind of file for every .proto: the comparison below cannot pass vacuously
    expected = sorted(stem + suffix for stem in protos for suffix in SUFFIXES)
    assert sorted(fresh) == expected, f"unexpected generator output: {sorted(fresh)}"

    stale = _stale(fresh, _generated(ROOT))
    assert not stale, f"generated protobuf code is stale: run `make protos` ({', '.join(stale)})"


def test_stale_names_changed_missing_and_extra_files() -> None:
    fresh = {"a_pb2.py": b"new", "b_pb2.py": b"same", "c_pb2.pyi": b"only fresh"}
    committed = {"a_pb2.py": b"old", "b_pb2.py": b"same", "d_pb2_grpc.py": b"only committed"}
    assert _stale(fresh, committed) == [
        "proto/v1/a_pb2.py",
        "proto/v1/c_pb2.pyi",
        "proto/v1/d_pb2_grpc.py",
    ]
    assert _stale(fresh, dict(fresh)) == []
