"""The coordinator daemon: state, artifacts, fleet, jobs, gRPC services and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from common.net import CHUNK_BYTES, TlsFiles, create_server
from common.wire import CountingServerInterceptor, PreSerializedResponses
from coordinator.artifacts import ArtifactStore
from coordinator.control_service import ControlServicer
from coordinator.fleet import Fleet
from coordinator.jobs import JobManager
from coordinator.metrics import CoordinatorMetrics
from coordinator.participant_service import FleetSettings, ParticipantServicer
from coordinator.state import StateStore, open_store
from coordinator.uploads import UploadSpool
from proto.fused.v1 import control_pb2_grpc, participant_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = dataclasses.field(
        default="127.0.0.1:50051", metadata={"help": "gRPC address for both services"}
    )
    state_dir: Path = dataclasses.field(
        default=Path("fused-state"), metadata={"help": "SQLite state and artifacts live here"}
    )
    state_db: str = dataclasses.field(
        default="", metadata={"help": "state location: a SQLite path or 'memory'"}
    )
    metrics_address: str = dataclasses.field(default="127.0.0.1", metadata={"help": ""})
    metrics_port: int = dataclasses.field(
        default=9464, metadata={"help": "Prometheus endpoint port; 0 picks one, -1 disables"}
    )
    heartbeat_interval_s: float = 5.0  # agents beat only while busy: a long poll shows liveness
    offline_after_s: float = 15.0
    poll_wait_s: float = 30.0
    max_upload_mb: int = 512
    ready_file: Path | None = dataclasses.field(
        default=None, metadata={"help": "write the bound ports here as JSON once serving"}
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = dataclasses.field(
        default=None, metadata={"help": "CA that client certificates must chain to (mTLS)"}
    )
    log_level: str = "info"
    log_json: bool = False

    def store_location(self) -> str:
        return self.state_db or str(self.state_dir / "state.db")


class Coordinator:
    def __init__(self, config: CoordinatorConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = CoordinatorMetrics(self.registry)
        self.port = 0
        self.metrics_port = 0
        self._store: StateStore | None = None
        self._server: Any = None
        self._http: Any = None
        self.jobs: JobManager | None = None
        self.fleet: Fleet | None = None

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        store = self._store = open_store(cfg.store_location())
        artifacts = ArtifactStore(cfg.state_dir / "artifacts")
        artifacts.ensure()
        fleet = self.fleet = Fleet(store, cfg.offline_after_s)
        jobs = self.jobs = JobManager(store, artifacts, fleet, self.metrics)
        for job_id in jobs.recover():
            log.warning("job %s was unfinished when the coordinator stopped: marked failed", job_id)
        self.metrics.bind_gauges(lambda: len(fleet.online_ids()), fleet.tasks_in_flight)
        interceptor = CountingServerInterceptor(
            self.metrics.wire,
            participant_label=lambda pid: (
                (pid if fleet.is_registered(pid) else "unknown") if pid else "-"
            ),
            hook=jobs.record_bytes,
        )
        tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if cfg.tls_cert else None
        self._server, self.port = create_server(
            cfg.listen, [interceptor, PreSerializedResponses()], tls
        )
        settings = FleetSettings(
            cfg.heartbeat_interval_s, cfg.poll_wait_s, CHUNK_BYTES, cfg.max_upload_mb << 20
        )
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
            ParticipantServicer(
                fleet,
                artifacts,
                settings,
                self.metrics,
                UploadSpool(cfg.state_dir / "uploads", artifacts),
                store,
            ),
            self._server,
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            ControlServicer(store, artifacts, fleet, jobs, CHUNK_BYTES), self._server
        )
        await self._server.start()
        if cfg.metrics_port >= 0:
            self._http, _ = start_http_server(
                cfg.metrics_port, cfg.metrics_address, registry=self.registry
            )
            self.metrics_port = self._http.server_port
        log.info("coordinator serving on port %d, metrics on %d", self.port, self.metrics_port)
        if cfg.ready_file is not None:
            ready = {"port": self.port, "metrics_port": self.metrics_port}
            tmp = cfg.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready))
            tmp.replace(cfg.ready_file)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful: running jobs are marked failed, in-flight calls get grace_s to finish."""
        if self.jobs is not None:
            await self.jobs.shutdown()
        if self._server is not None:
            stopping = asyncio.create_task(self._server.stop(grace_s))  # refuses new calls
            await asyncio.sleep(0)
            if self.fleet is not None:
                self.fleet.shutdown()  # answer open long polls instead of waiting out grace_s
            await stopping
        if self._http is not None:
            self._http.shutdown()
        if self._store is not None:
            self._store.close()
        log.info("coordinator stopped")
