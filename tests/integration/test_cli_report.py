"""fusedctl report, watch and its errors, and the daemons' JSON logs, with real processes on
127.0.0.1: a coordinator and participant agents logging with --log-json."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fused.cli.pki import init_pki
from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.train_config import TrainConfig
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation
from tests.integration.conftest import NUM_PARTICIPANTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fusedctl(
    address: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def json_federation(
    digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    with LocalFederation(tmp_path_factory.mktemp("jsonlogs")) as fed:
        fed.start_coordinator("--log-json", "--offline-after-s", "10")
        for i in range(NUM_PARTICIPANTS):
            fed.start_participant(digits_shards / f"p{i}", "--log-json")
        fed.wait_online(NUM_PARTICIPANTS)
        yield fed


@pytest.fixture(scope="module")
def trained(json_federation: LocalFederation) -> control_pb2.JobInfo:
    """A finished two-round training job, as GetJob reports it."""
    stub = json_federation.control()
    spec = TrainingSpec(rounds=2, train=TrainConfig(lr=0.05), min_participants=NUM_PARTICIPANTS)
    job = start_training(stub, spec)
    for _ in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=300):
        pass  # the stream ends when the job does
    info = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id), timeout=30)
    assert info.status == "completed", info.reason
    return info


def round_row(r: control_pb2.RoundInfo) -> str:
    """The start of the report's table row for a round, from GetJob's numbers."""
    m = json.loads(r.metrics_json)

    def num(key: str) -> str:
        return f"{m[key]:.4f}" if isinstance(m.get(key), float) else "-"

    up, down = (sum(m["bytes"][d].values()) for d in ("up", "down"))
    cells = [r.phase, str(r.round), " ".join(r.participants), num("accuracy"), num("fa")]
    return "| " + " | ".join([*cells, num("train_loss"), str(up), str(down)]) + " |"


def test_report_writes_markdown_and_pngs(
    json_federation: LocalFederation, trained: control_pb2.JobInfo, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = fusedctl(json_federation.address, "report", trained.job_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("accuracy.png", "bytes.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    text = (out / "report.md").read_text()
    assert text.startswith(f"# Job {trained.job_id}\n")
    assert f"| reason | {trained.reason} |" in text
    assert {r.phase for r in trained.rounds} == {"train", "evaluate"}
    assert len(trained.rounds) == 4
    for r in trained.rounds:
        assert round_row(r) in text, round_row(r)
    result = json.loads(trained.result_json)
    assert f"- new model version: `{result['version_id']}`" in text
    assert f"- test accuracy (RA): {result['accuracy']:.4f}" in text


def read_terminal(cmd: list[str], env: dict[str, str]) -> str:
    """Run cmd with a pseudo-terminal as stdout (so isatty() is true); all it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child's side of the terminal is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_watch_draws_a_live_view_on_a_terminal(
    json_federation: LocalFederation, trained: control_pb2.JobInfo
) -> None:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", json_federation.address]
    screen = read_terminal([*cmd, "watch", trained.job_id], {**os.environ, "COLUMNS": "120"})
    assert "\x1b[J" in screen and "A\r\x1b[J" in screen  # redrawn in place, not scrolled
    final = screen.rsplit("\x1b[J", 1)[1].splitlines()
    assert final[0] == f"job {trained.job_id}  train  completed"
    assert final[1].startswith("  train     [########################]  2/2")
    assert final[2].startswith("  evaluate  [########################]  2/2")
    assert f"  result   completed: {trained.reason}" in final


def test_watch_without_a_terminal_prints_lines_and_a_summary(
    json_federation: LocalFederation, trained: control_pb2.JobInfo
) -> None:
    plain = fusedctl(json_federation.address, "watch", trained.job_id)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout
    lines = plain.stdout.splitlines()
    assert sum("round_completed" in line for line in lines) == 4
    assert f"job {trained.job_id}  train  completed" in lines  # the closing summary
    as_json = fusedctl(json_federation.address, "--json", "watch", trained.job_id)
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert events[0]["kind"] == "job_started" and events[-1]["kind"] == "job_completed"
    assert all(e["job_id"] == trained.job_id for e in events)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_json_logs_carry_job_round_and_participant(
    json_federation: LocalFederation, trained: control_pb2.JobInfo
) -> None:
    entries = json_lines(json_federation.work_dir / "coordinator.log")  # every line parses
    rounds = [e for e in entries if e.get("job") == trained.job_id and "round" in e]
    started = {(e["phase"], e["round"]) for e in rounds if e["message"].endswith(" started")}
    assert started == {("train", 1), ("train", 2), ("evaluate", 1), ("evaluate", 2)}
    opened = [e for e in rounds if "participant" not in e][:4]  # the round's own lines
    assert all(e["message"] == f"{e['phase']} round {e['round']} started" for e in opened)
    accepted = [e for e in rounds if " accepted: " in e["message"]]  # one per task, with timings
    assert {(e["phase"], e["round"], e["participant"]) for e in accepted} == {
        (phase, r, f"p{i}")
        for phase in ("train", "evaluate")
        for r in (1, 2)
        for i in range(NUM_PARTICIPANTS)
    }
    registered = {e["participant"] for e in entries if "registered" in e["message"]}
    assert registered == {f"p{i}" for i in range(NUM_PARTICIPANTS)}
    for i in range(NUM_PARTICIPANTS):
        agent = json_lines(json_federation.work_dir / f"p{i}.log")
        assert any(e["message"].startswith(f"registered p{i} ") for e in agent)


def one_line_and_hint(done: subprocess.CompletedProcess[str], first: str, hint: str) -> None:
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(first), lines[0]
    assert lines[1].startswith("  hint: ") and hint in lines[1], lines[1]


def test_unknown_job(json_federation: LocalFederation, tmp_path: Path) -> None:
    for args in (["status"], ["watch"], ["report", "--out", str(tmp_path / "r")], ["layers"]):
        done = fusedctl(json_federation.address, args[0], "job-nope", *args[1:])
        one_line_and_hint(done, "fusedctl: NOT_FOUND: no job 'job-nope'", "`fusedctl jobs`")
    assert not (tmp_path / "r").exists()


def free_port() -> int:
    """A loopback port nothing listens on: bound once, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_coordinator(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (["jobs"], ["watch", "job-1"], ["report", "job-1", "--out", str(tmp_path)]):
        done = fusedctl(address, *args)
        one_line_and_hint(done, f"fusedctl: UNAVAILABLE at {address}: ", "fused-coordinator")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, Path]]:
    """A coordinator that requires credentials: TLS and the bearer tokens of an auth file."""
    pki = tmp_path_factory.mktemp("pki")
    init_pki(pki, ["p0"])
    with LocalFederation(tmp_path_factory.mktemp("secured")) as fed:
        fed.start_coordinator(
            *(
                "--tls-cert",
                str(pki / "coordinator.pem"),
                "--tls-key",
                str(pki / "coordinator.key"),
            ),
            *("--auth-file", str(pki / "auth.toml")),
        )
        yield fed, pki


def test_bad_credentials(secured: tuple[LocalFederation, Path], tmp_path: Path) -> None:
    fed, pki = secured
    ca = ("--tls-ca", str(pki / "ca.pem"))
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-operators-token\n")
    unknown = fusedctl(fed.address, *ca, "--token-file", str(wrong), "jobs")
    one_line_and_hint(unknown, "fusedctl: UNAUTHENTICATED: unknown bearer token", "--token-file")
    assert "not-the-operators-token" not in unknown.stderr
    missing = fusedctl(fed.address, *ca, "jobs")
    one_line_and_hint(missing, "fusedctl: UNAUTHENTICATED: ", "fusedctl certs init")
    participant = fusedctl(
        fed.address, *ca, "--token-file", str(pki / "participant-p0.token"), "jobs"
    )
    one_line_and_hint(participant, "fusedctl: PERMISSION_DENIED: ", "operator credential")
    good = fusedctl(fed.address, *ca, "--token-file", str(pki / "operator-admin.token"), "jobs")
    assert good.returncode == 0, good.stderr
