"""fusedctl as an operator runs it: a real process against a real federation."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fused.tools.launch import LocalFederation, scrape
from tests.integration.conftest import NUM_PARTICIPANTS


def fusedctl(
    fed: LocalFederation, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", fed.address, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def as_json(fed: LocalFederation, *args: str) -> Any:
    return json.loads(fusedctl(fed, "--json", *args).stdout)


def test_operator_session(federation: LocalFederation, tmp_path: Path) -> None:
    people = as_json(federation, "participants")
    assert sum(p.get("online", False) for p in people) >= NUM_PARTICIPANTS
    train = fusedctl(
        federation,
        "train",
        "--rounds",
        "2",
        "--lr",
        "0.05",
        "--min-participants",
        str(NUM_PARTICIPANTS),
        "--wait",
    )
    assert "job_completed" in train.stdout and "RA " in train.stdout
    jobs = as_json(federation, "jobs")
    job_id = jobs[-1]["job_id"]
    status = as_json(federation, "status", job_id)
    assert status["status"] == "completed" and len(status["rounds"]) >= 2
    assert "completed" in fusedctl(federation, "status", job_id).stdout

    unlearn = fusedctl(
        federation, "unlearn", "--class", "1", "--rounds", "2", "--lr", "0.05", "--wait"
    )
    assert "job_completed" in unlearn.stdout and "FA " in unlearn.stdout
    unlearn_job = as_json(federation, "jobs")[-1]["job_id"]
    ranking = as_json(federation, "layers", unlearn_job)
    assert ranking["rule"] == "combined"  # the default
    layers = ranking["layers"]
    assert sum(1 for layer in layers if layer["selected"]) == 3  # the default K
    assert all(layer["forget_distance"] is not None for layer in layers)  # every holder measured
    text = fusedctl(federation, "layers", unlearn_job).stdout
    assert "selection: combined" in text and "CLI distance" in text and "forget distance" in text

    models = as_json(federation, "models")
    adapter = next(m for m in models if m["kind"] == "adapter" and m.get("active"))
    tree = fusedctl(federation, "models").stdout
    assert f"└ {adapter['version_id']}" in tree  # shown under its base version

    evaluated = fusedctl(federation, "eval", adapter["version_id"], "--wait")
    assert "RA " in evaluated.stdout and "FA " in evaluated.stdout

    out = tmp_path / "unlearned.safetensors"
    exported = as_json(federation, "export", "--out", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == exported["sha256"] == adapter["digest"]
    reverted = as_json(federation, "revert", adapter["version_id"])
    assert reverted["version_id"] == adapter["parent_id"]
    fusedctl(federation, "export", "--out", str(out))
    base = next(m for m in as_json(federation, "models") if m["version_id"] == adapter["parent_id"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == base["digest"]
    assert as_json(federation, "reapply", adapter["version_id"])["active"] is True


def test_errors_say_what_to_do(federation: LocalFederation, tmp_path: Path) -> None:
    missing = fusedctl(federation, "status", "job-nope", check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "hint" in missing.stderr
    bad = fusedctl(federation, "train", "--rounds", "0", check=False)
    assert bad.returncode == 1 and "rounds must be >= 1" in bad.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text("3, 5\nseven\n")
    wrong = fusedctl(federation, "unlearn", "--samples", f"p0:{ids}", check=False)
    assert wrong.returncode == 1 and "'seven' is not a sample id" in wrong.stderr
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", "127.0.0.1:1", "jobs"]
    down = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "UNAVAILABLE at 127.0.0.1:1" in down.stderr


def test_cancel_stops_a_running_job_and_closes_its_tasks(federation: LocalFederation) -> None:
    started = as_json(federation, "train", "--rounds", "10000", "--min-participants", "1")
    job_id = started["job_id"]
    cancelled = as_json(federation, "cancel", job_id)
    assert (cancelled["status"], cancelled["reason"]) == ("failed", "cancelled by an operator")
    again = fusedctl(federation, "cancel", job_id, check=False)
    assert again.returncode == 1
    assert f"FAILED_PRECONDITION: job {job_id} is failed: nothing to cancel" in again.stderr
    unknown = fusedctl(federation, "cancel", "job-nope", check=False)
    assert "NOT_FOUND" in unknown.stderr and "fusedctl jobs" in unknown.stderr
    metrics = scrape(federation.metrics_port)
    assert metrics[("fused_tasks_in_flight", ())] == 0  # the open round's tasks were closed


def test_finished_jobs_leave_only_what_versions_need(federation: LocalFederation) -> None:
    fusedctl(federation, "train", "--rounds", "3", "--min-participants", "1", "--wait")
    models = as_json(federation, "models")
    needed = set()
    for m in models:
        meta = m.get("meta", {})
        kept = ("adapter_digest", "base_digest", "schema_digest", "init_digest")
        needed |= {m["digest"], *(meta.get(key) for key in kept)} - {None}
    objects = federation.work_dir / "state" / "artifacts" / "sha256"
    for _ in range(100):  # the deletions run in a thread after the job ends
        stored = {p.name for p in objects.glob("??/*")}
        if stored == needed:
            break
        time.sleep(0.1)
    assert stored == needed  # the rounds' aggregates and uploads were collected
    assert not list((federation.work_dir / "state" / "uploads").glob("*/*.part"))
