"""What the load generator's simulated participants declare (the built-in MLP on 10 classes of
digits-sized shards) and the weights its job starts from, made in a child process: the load
generator itself never imports torch, so a thousand participants fit in one process.

`python -m bench.load_assets DIR` writes DIR/summary.pb (a serialized DataSummary) and
DIR/initial.safetensors; `make_assets()` runs it and returns both.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.load_participant import DATASET, NUM_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS


def make_assets() -> tuple[bytes, bytes]:
    """(serialized DataSummary, initial weights) from a child process."""
    with tempfile.TemporaryDirectory(prefix="load-assets-") as tmp:
        subprocess.run([sys.executable, "-m", "bench.load_assets", tmp], check=True)
        out = Path(tmp)
        return (out / "summary.pb").read_bytes(), (out / "initial.safetensors").read_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    from fused.common.codecs.tensor_codec import encode_tensors
    from fused.common.ml.workloads import resolve_workload
    from fused.participant.site import builtin_summary

    out = Path((sys.argv[1:] if argv is None else argv)[0])
    counts = [TRAIN_PER_CLASS] * NUM_CLASSES
    summary = builtin_summary("mlp", counts, TEST_PER_CLASS * NUM_CLASSES, DATASET)
    (out / "summary.pb").write_bytes(summary.SerializeToString())
    model = resolve_workload("mlp").with_classes(NUM_CLASSES).build_model(0)
    (out / "initial.safetensors").write_bytes(encode_tensors(model.state_dict(), {"model": "mlp"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
