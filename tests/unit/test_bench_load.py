"""bench.load: its torch-free updates pass the coordinator's strict decoder, and a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.load_artifacts import ModelCache, make_update
from bench.load_participant import Settings
from bench.load_workers import slices
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
    argv += ["--load-processes", "2"]
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
    assert result["load_processes"] == 2
    assert result["torch_imported"] is False
    # Protocol 2: the model comes inline with each task, the update goes inline with its
    # result, and the result's reply brings the next task: no transfer calls, one long poll.
    calls = result["calls"]
    assert calls["download"] == 0 and calls["upload"] == 0
    assert calls["pull_task"] == 20
    assert calls["push_result"] == 40  # a training and an evaluation result each
    assert result["inline"]["updates_in_results"] == 20
    assert result["inline"]["tasks_from_push_replies"] == 20  # each evaluation task
    assert result["calls_per_participant_per_round"]["push_result"] == 2.0
    for key in ("register", "push_result", "overall"):
        assert result["p50_ms"][key] <= result["p99_ms"][key]
    assert result["peak_rss_mb"] > 0 and result["cpu_seconds"] > 0


def test_slices_cover_every_participant_once() -> None:
    settings = Settings("127.0.0.1:1", 1.0, b"")
    parts = slices(10, 3, settings, {"load-00004": "t4"})
    assert [p.first for p in parts] == [0, 3, 7]
    assert sum(len(p.tokens) for p in parts) == 10
    assert parts[1].tokens == (None, "t4", None, None)
    assert len(slices(2, 5, settings, {})) == 2  # no empty process
