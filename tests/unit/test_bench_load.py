"""bench.load: its torch-free updates pass the coordinator's strict decoder, and a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.load_participant import ModelCache, make_update
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors, schema_of
from fused.common.ml.models import init_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_update_decodes_against_the_model_schema() -> None:
    state = init_model("mlp", 10, 0).state_dict()
    blob = encode_tensors(state, {"model": "mlp"})
    weights = ModelCache().get("digest", blob)
    update = make_update(weights, "mlp", "load-00001", 1)
    decoded, meta = decode_tensors(update, schema=schema_of(state))
    assert meta == {"model": "mlp"}
    for name, tensor in state.items():
        diff = (decoded[name] - tensor).abs()
        assert 0 < float(diff.max()) < 0.02
    assert make_update(weights, "mlp", "load-00001", 1) == update  # deterministic
    assert make_update(weights, "mlp", "load-00002", 1) != update  # distinct per participant
    assert torch.equal(decode_tensors(blob)[0]["net.0.weight"], state["net.0.weight"])


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, bench.load; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_small_run_completes_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--participants", "20", "--rounds", "1", "--work-s", "0.2", "--json-out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["job_status"] == "completed"
    assert result["errors"] == 0
    assert result["participants"] == 20
    assert result["connections"] == 20
    assert result["torch_imported"] is False
    assert result["calls"]["upload"] == 20
    assert result["calls"]["push_result"] == 40  # a training and an evaluation result each
    for key in ("register", "download", "upload", "push_result", "overall"):
        assert result["p50_ms"][key] <= result["p99_ms"][key]
    assert result["peak_rss_mb"] > 0 and result["cpu_seconds"] > 0
