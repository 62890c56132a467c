"""The example workload outside the core (examples/wordlang: word-language identification
with a character transformer on Debian's word lists), installed into this environment as its
own package and run through real processes: the agents find it by its entry point, `fusedctl`
builds its initial weights, and the federation trains it, forgets a participant and samples
with FUSED (adapters on attention and embedding weights), reverts and reapplies exactly."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fused.common.ml.workloads import clear_cache, resolve_workload
from fused.tools.launch import LocalFederation

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "wordlang"
DICTIONARIES = ("american-english", "ngerman", "french", "italian", "spanish")
PACKAGES = "wamerican wngerman wfrench witalian wspanish"
PARTICIPANTS = 3


def fusedctl(fed: LocalFederation, *args: str) -> Any:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", fed.address, "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    text = done.stdout.strip()
    if "--wait" in args:  # one JSON event per line: the job as it ended, from its id
        job_id = json.loads(text.splitlines()[0])["job_id"]
        return fusedctl(fed, "status", job_id)
    return json.loads(text) if text else None


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed (editable, into this interpreter's environment) and its data."""
    missing = [d for d in DICTIONARIES if not (Path("/usr/share/dict") / d).exists()]
    if missing:
        pytest.skip(f"word lists {missing} missing: apt-get install {PACKAGES}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE)], check=True)
    site.addsitedir(sysconfig.get_paths()["purelib"])  # this process: the editable finder
    importlib.invalidate_caches()
    clear_cache()
    out = tmp_path_factory.mktemp("wordlang") / "data"
    prepare = [sys.executable, "-m", "fused_wordlang.prepare", "--out", str(out)]
    size = ["--participants", str(PARTICIPANTS), "--per-language", "1500"]
    subprocess.run([*prepare, *size], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def federation(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(tmp_path_factory.mktemp("wordlang-federation")) as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            pid = f"p{i}"
            extra = ("--workload", "wordlang", "--participant-id", pid)
            fed.start_participant(data / pid, *extra)
        fed.wait_online(PARTICIPANTS)
        yield fed


def result(info: dict[str, Any]) -> dict[str, Any]:
    assert info["status"] == "completed", info.get("reason")
    out: dict[str, Any] = info["result"]
    return out


def export_sha(fed: LocalFederation, tmp_path: Path, version: str = "") -> str:
    out = tmp_path / f"export-{version or 'active'}.safetensors"
    fusedctl(fed, "export", *([version] if version else []), "--out", str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_package_is_found_by_its_entry_point(data: Path) -> None:
    workload = resolve_workload("wordlang")
    assert workload.name == "wordlang" and workload.num_classes == 5
    adaptable = [e.name for e in workload.tensor_schema() if e.adaptable]
    assert "tok_emb.weight" in adaptable and "blocks.0.attn.q.weight" in adaptable
    assert all(n.endswith("weight") and "ln" not in n for n in adaptable)  # 2-D weights only


def test_train_forget_revert_reapply(
    federation: LocalFederation, data: Path, tmp_path: Path
) -> None:
    listed = fusedctl(federation, "participants")
    assert {p["info"]["workload"] for p in listed} == {"wordlang"}
    train = ("train", "--model", "wordlang", "--rounds", "3", "--lr", "0.05")
    trained = result(fusedctl(federation, *train, "--min-participants", "3", "--wait"))
    assert trained["accuracy"] > 0.5  # five languages: chance is 0.2
    base = trained["version_id"]
    base_sha = export_sha(federation, tmp_path)

    forget = ("unlearn", "--participant", "p0", "--rounds", "2", "--lr", "0.05", "--wait")
    first = result(fusedctl(federation, *forget))
    schema = {e.name: e for e in resolve_workload("wordlang").tensor_schema()}
    assert all(schema[n].adaptable for n in first["layers"])
    assert first["adapter_params"] < first["model_params"] / 10
    unlearned_sha = export_sha(federation, tmp_path)
    assert unlearned_sha != base_sha

    fusedctl(federation, "revert", first["version_id"])
    assert export_sha(federation, tmp_path) == base_sha  # the base, bit for bit
    fusedctl(federation, "reapply", first["version_id"])
    assert export_sha(federation, tmp_path) == unlearned_sha

    fusedctl(federation, "revert", first["version_id"])
    ids = tmp_path / "ids.txt"
    with (data / "p1" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))[:50]
    ids.write_text("\n".join(r["id"] for r in rows))
    samples = ("unlearn", "--samples", f"p1:{ids}", "--base", base, "--rounds", "2", "--wait")
    second = result(fusedctl(federation, *samples))
    assert second["base_version"] == base and second["fa_before"] is not None
    models = {m["version_id"]: m for m in fusedctl(federation, "models")}
    assert models[second["version_id"]]["parent_id"] == base
