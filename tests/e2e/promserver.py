"""A real Prometheus server (Debian's `prometheus` package) as a child process on loopback."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_PROMETHEUS = ROOT / "deploy" / "prometheus"
COORDINATOR_JOB = "fused-coordinator"
PER_PARTICIPANT_JOB = "fused-coordinator-participants"  # the coordinator's other path
PARTICIPANT_JOB = "fused-participant"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def loopback_config(
    coordinator_port: int, participant_ports: dict[str, int], interval: str = "1s"
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its targets replaced by the loopback ports.

    Keeps the deployed job names, metrics paths, target labels and rule files (as absolute
    paths), so the check exercises the shipped configuration, only faster (every job
    scrapes at `interval`).
    """
    config: dict[str, Any] = yaml.safe_load((DEPLOY_PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    config["rule_files"] = [str(DEPLOY_PROMETHEUS / f) for f in config.get("rule_files", [])]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {COORDINATOR_JOB, PER_PARTICIPANT_JOB, PARTICIPANT_JOB}, sorted(jobs)
    for job in jobs.values():
        job.update(scrape_interval=interval, scrape_timeout=interval)
    for name in (COORDINATOR_JOB, PER_PARTICIPANT_JOB):
        jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{coordinator_port}"]}]
    jobs[PARTICIPANT_JOB]["static_configs"] = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"participant": pid}}
        for pid, port in sorted(participant_ports.items())
    ]
    return config


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """`prometheus` with a generated config, its TSDB under work_dir, on 127.0.0.1 only."""

    def __init__(self, binary: str, config: dict[str, Any], work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.config_path = work_dir / "prometheus.yml"
        self.log_path = work_dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def check_config(self) -> str:
        """`promtool check config`: the config and every rule file it names must load."""
        promtool = shutil.which("promtool") or str(Path(self.binary).with_name("promtool"))
        done = subprocess.run(
            [promtool, "check", "config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise PrometheusError(f"promtool check config failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, timeout_s: float = 30, attempts: int = 3) -> None:
        for _ in range(attempts):  # a free port can be taken before prometheus binds it
            self.port = free_port()
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.work_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
            log.close()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self._url("/-/ready"), timeout=2) as reply:
                        if reply.status == 200:
                            return
                except (urllib.error.URLError, ConnectionError):
                    pass
                time.sleep(0.1)
            self.stop()
        raise PrometheusError(f"prometheus did not become ready:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _url(self, path: str, params: dict[str, str] | None = None) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        try:
            with urllib.request.urlopen(self._url(f"/api/v1/{path}", params), timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.code} {exc.read()!r}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; its vector or matrix result."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_scraped_after(self, after: float, targets: int, timeout_s: float = 30) -> None:
        """Until every one of `targets` targets is up and was last scraped after `after`
        (a wall-clock time; the margin covers Prometheus's 2 ms timestamp alignment)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ups = self.query("timestamp(up) and up == 1")
            stamps = [float(s["value"][1]) for s in ups]
            if len(stamps) == targets and min(stamps) > after + 0.05:
                return
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"not all {targets} targets up and scraped after {after}: {ups}"
                )
            time.sleep(0.2)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
