"""The client library against real processes (conftest's digits federation): docs/CLIENT.md's
script runs as written, each failure class arrives as its own exception with the coordinator's
words, and `wait` follows a job across a coordinator restart."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fused.client import (
    Conflict,
    Coordinator,
    ForgetSpec,
    InvalidRequest,
    JobStatus,
    NotFound,
    TrainConfig,
    TrainingSpec,
    Unavailable,
    UnlearningSpec,
)
from fused.tools.launch import LocalFederation
from tests.integration.conftest import NUM_PARTICIPANTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "CLIENT.md"
TRAINING = TrainingSpec(
    rounds=4,
    train=TrainConfig(local_epochs=1, lr=0.05, batch_size=32),
    min_participants=NUM_PARTICIPANTS,
    evaluate_each_round=False,
)


def test_the_documented_script_runs_as_written(federation: LocalFederation) -> None:
    with Coordinator(federation.address) as coordinator:
        trained = coordinator.wait(coordinator.train(TRAINING).job_id)
        assert trained.status is JobStatus.COMPLETED, trained.record.reason
    [script] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(script.strip().splitlines()) <= 20
    env = {**os.environ, "FUSED_COORDINATOR": federation.address}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "started job-" in done.stdout and "round_completed adapter 3" in done.stdout
    assert re.search(r"RA 0\.\d+ -> 0\.\d+ FA 0\.\d+", done.stdout), done.stdout
    with Coordinator(federation.address) as coordinator:
        [entry] = coordinator.ledger()
        assert f"ledger entry {entry.entry_id}" in done.stdout
        coordinator.withdraw(entry.entry_id, keep_version=True)


def test_each_failure_class_is_its_own_exception(federation: LocalFederation) -> None:
    with Coordinator(federation.address) as coordinator:
        with pytest.raises(NotFound, match="no job 'job-nope'"):
            coordinator.job("job-nope")
        served = coordinator.active_version()
        assert served is not None
        with pytest.raises(Conflict, match="is the served version"):
            coordinator.drop_versions([served.version_id])
        with pytest.raises(InvalidRequest, match="rounds must be >= 1"):
            coordinator.unlearn(UnlearningSpec(ForgetSpec("participant", "p1"), rounds=0))
    unreachable = Coordinator("127.0.0.1:9", timeout_s=2, retries=1, backoff_s=0.01)
    with unreachable, pytest.raises(Unavailable):
        unreachable.jobs()


def test_wait_follows_a_job_across_a_coordinator_restart(federation: LocalFederation) -> None:
    fed = federation
    with Coordinator(fed.address, retries=10, backoff_s=0.2) as coordinator:
        job = coordinator.train(dataclasses.replace(TRAINING, rounds=8))
        seen: list[str] = []

        def restart_after_round_two() -> None:
            while "round_completed 2" not in seen:
                time.sleep(0.05)
            assert fed.coordinator is not None
            fed.coordinator.send_signal(signal.SIGKILL)
            fed.coordinator.wait(60)
            fed.start_coordinator(port=fed.port)

        killer = threading.Thread(target=restart_after_round_two)
        killer.start()
        done = coordinator.wait(job.job_id, on_event=lambda e: seen.append(f"{e.kind} {e.round}"))
        killer.join()
    assert done.status is JobStatus.COMPLETED, done.record.reason
    kinds = [s.split()[0] for s in seen]
    assert kinds.count("job_resumed") == 1 and kinds[-1] == "job_completed"
    assert [s for s in seen if s.startswith("round_completed")][-1] == "round_completed 8"
