"""Start and stop a federation of real processes on loopback (demo, tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from fused.common.rpc.channels import TlsFiles, create_channel
from fused.proto.v1 import control_pb2, control_pb2_grpc


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            data: dict[str, int] = json.loads(path.read_text())
            return data
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear within {timeout_s} s")


def scrape(
    port: int, host: str = "127.0.0.1", path: str = "/metrics"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of a Prometheus endpoint: {(name, sorted labels): value}. The
    coordinator's per-participant bytes are at path "/metrics/participants" (started with
    --per-participant-metrics)."""
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


class LocalFederation:
    """A coordinator and participant agents as child processes, logs under work_dir."""

    def __init__(
        self,
        work_dir: Path,
        python: str = sys.executable,
        tls: TlsFiles | None = None,
        operator_token: str | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.python = python
        self.tls = tls  # the operator's TLS files, for control()
        self.operator_token = operator_token
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.participants: dict[str, subprocess.Popen[bytes]] = {}
        self.participant_metrics: dict[str, int] = {}
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = (self.work_dir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([self.python, *args], stdout=log, stderr=subprocess.STDOUT, env=env)

    def start_coordinator(self, *extra: str, port: int = 0, timeout_s: float = 60) -> None:
        ready = self.work_dir / "coordinator.ready"
        ready.unlink(missing_ok=True)
        self.coordinator = self._spawn(
            "coordinator",
            [
                "-m",
                "fused.coordinator.main",
                "--listen",
                f"127.0.0.1:{port}",
                "--state-dir",
                str(self.work_dir / "state"),
                "--metrics-port",
                "0",
                "--ready-file",
                str(ready),
                *extra,
            ],
        )
        ports = _wait_for_file(ready, self.coordinator, timeout_s)
        self.port, self.metrics_port = ports["port"], ports["metrics_port"]
        self.health_port = ports.get("health_port", 0)

    def start_participant(
        self, shard_dir: Path, *extra: str, name: str | None = None, timeout_s: float = 60
    ) -> str:
        name = name or shard_dir.name
        ready = self.work_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            name,
            [
                "-m",
                "fused.participant.main",
                "--data-dir",
                str(shard_dir),
                "--coordinator",
                self.address,
                "--metrics-port",
                "0",
                "--ready-file",
                str(ready),
                *extra,
            ],
        )
        self.participants[name] = proc
        self.participant_metrics[name] = _wait_for_file(ready, proc, timeout_s)["metrics_port"]
        return name

    def control(self) -> control_pb2_grpc.ControlServiceStub:
        channel = create_channel(self.address, self.tls, self.operator_token)
        return control_pb2_grpc.ControlServiceStub(channel)

    def withdraw_all(self) -> list[str]:
        """Withdraw every binding forget-ledger entry, keeping the served version, so that the
        next job starts on a clean slate (scenarios and tests that apply requests one at a
        time to the same base)."""
        stub = self.control()
        active = [
            e.entry_id
            for e in stub.ListLedger(control_pb2.ListLedgerRequest(), timeout=30).entries
            if e.status != "withdrawn"  # active or consolidated: both bind later jobs
        ]
        for entry_id in active:
            request = control_pb2.WithdrawalRequest(entry_id=entry_id, keep_version=True)
            stub.WithdrawRequest(request, timeout=30)
        return active

    def wait_online(self, count: int, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        stub = self.control()
        while True:
            reply = stub.ListParticipants(control_pb2.ListParticipantsRequest(), timeout=10)
            online = [p.participant_id for p in reply.participants if p.online]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(online)} of {count} participants online")
            time.sleep(0.1)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_coordinator(self, timeout_s: float = 15) -> int:
        assert self.coordinator is not None
        return self._stop(self.coordinator, timeout_s)

    def stop_participant(self, name: str, timeout_s: float = 15) -> int:
        return self._stop(self.participants.pop(name), timeout_s)

    def stop(self) -> None:
        for proc in self.participants.values():  # signal all first: they stop in parallel
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in list(self.participants):
            self.stop_participant(name)
        if self.coordinator is not None:
            self.stop_coordinator()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
