"""The coordinator daemon: state, artifacts, fleet, jobs, gRPC services and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc_health.v1 import _async as health_aio  # health.aio, which mypy cannot see
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from fused.common.rpc.channels import (
    CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    TlsFiles,
    create_bare_server,
    create_server,
)
from fused.common.rpc.identity import read_auth_file
from fused.common.rpc.metering import CountingServerInterceptor, PreSerializedResponses
from fused.common.rpc.protocol import INLINE_MAX_BYTES
from fused.coordinator.accounting import CallAccounting
from fused.coordinator.artifact_gc import Collection, Pinned
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import AuthInterceptor, AuthPolicy
from fused.coordinator.bulk_server import BulkDeps, BulkLimits, BulkServer
from fused.coordinator.bulk_tickets import TicketBook
from fused.coordinator.control_service import ControlServicer
from fused.coordinator.early_auth import EarlyAuthInterceptor
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.fleet import Fleet
from fused.coordinator.forget_requests import ForgetRequests
from fused.coordinator.heartbeat_pace import HeartbeatPace
from fused.coordinator.inline_blobs import InlineBlobs
from fused.coordinator.internal_errors import InternalErrors
from fused.coordinator.jobs import JOB_KINDS
from fused.coordinator.limits_config import LimitsConfig
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.metrics_http import serve_metrics
from fused.coordinator.participant_service import ParticipantServicer, RegisterTerms
from fused.coordinator.receipts import signing_key
from fused.coordinator.state import StateStore, open_store
from fused.coordinator.transfer import Downloads, Uploads, UploadSpool
from fused.proto.v1 import control_pb2, control_pb2_grpc, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)

SERVICES = (
    participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
)


@dataclass(frozen=True)
class CoordinatorConfig(LimitsConfig):  # connection and upload limits: limits_config
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
    per_participant_metrics: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "also count each participant's wire bytes, served at /metrics/participants "
            "(a few series per participant; /metrics keeps totals by method and phase)"
        },
    )
    heartbeat_interval_s: float = 5.0  # agents beat only while busy: a long poll shows liveness
    offline_after_s: float = 15.0
    max_heartbeats_per_s: float = dataclasses.field(
        default=500.0,
        metadata={
            "help": "heartbeats a second the busy agents should stay under: an agent registering "
            "into a fleet of N is told to beat every max(heartbeat_interval_s, N / this) "
            "seconds, and offline_after_s grows in proportion; 0 = heartbeat_interval_s"
        },
    )
    poll_wait_s: float = 30.0
    max_upload_mb: int = 512
    inline_max_bytes: int = dataclasses.field(
        default=INLINE_MAX_BYTES,
        metadata={
            "help": "artifacts up to this size travel inside task replies and results instead "
            "of DownloadBlob/UploadBlob streams (saves a call each way); 0 = always stream"
        },
    )
    ready_file: Path | None = dataclasses.field(
        default=None, metadata={"help": "write the bound ports here as JSON once serving"}
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = dataclasses.field(
        default=None, metadata={"help": "CA that client certificates must chain to (mTLS)"}
    )
    health_listen: str = dataclasses.field(
        default="",
        metadata={
            "help": "also serve only the gRPC health service here, in plaintext, for probes "
            "that cannot speak (mutual) TLS, e.g. Kubernetes grpc probes; '' = off"
        },
    )
    bulk_listen: str = dataclasses.field(
        default="",
        metadata={
            "help": "also move large artifacts over this host:port, a plain TCP port with the "
            "gRPC port's TLS (agents connect to it on the host they dial, with a ticket from "
            "an authenticated call); '' = off: DownloadBlob and UploadBlob streams only"
        },
    )
    bulk_max_connections: int = dataclasses.field(
        default=64, metadata={"help": "transfers the bulk port serves at once; more are closed"}
    )
    keep_artifacts: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "keep every round's aggregate and upload (audits); by default, whenever no "
            "job runs, artifacts no model version or unfinished job needs are deleted"
        },
    )
    auth_file: Path | None = dataclasses.field(
        default=None,
        metadata={"help": "TOML of participant and operator token hashes (fusedctl certs init)"},
    )
    auto_approve_forget_requests: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "start the unlearning job of a participant's own forgetting request at "
            "once, instead of waiting for an operator (fusedctl requests approve)"
        },
    )
    receipt_key: Path | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Ed25519 key signing unlearning receipts (fusedctl certs init makes one); "
            "default: receipt.key in the state directory, made on first start"
        },
    )
    threads: int = dataclasses.field(
        default=1,
        metadata={
            "help": "torch CPU threads for aggregation; 0 keeps torch's default (one per core). "
            "Uploads are folded in worker threads of their own, so one each is fastest: more "
            "made the exact sum of a small model 30x slower on 2 shared cores"
        },
    )
    log_level: str = "info"
    log_json: bool = False

    def store_location(self) -> str:
        return self.state_db or str(self.state_dir / "state.db")


class Coordinator:
    def __init__(self, config: CoordinatorConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        per_participant = CollectorRegistry() if config.per_participant_metrics else None
        self.metrics = CoordinatorMetrics(self.registry, per_participant)
        self.port = 0
        self.metrics_port = 0
        self._store: StateStore | None = None
        self._server: Any = None
        self._http: Any = None
        self.jobs: JobManager | None = None
        self.fleet: Fleet | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._health = health_aio.HealthServicer()
        self._health_server: Any = None
        self.health_port = 0
        self._bulk: BulkServer | None = None
        self.bulk_port = 0

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        store = self._store = open_store(cfg.store_location())
        artifacts = ArtifactStore(cfg.state_dir / "artifacts")
        artifacts.ensure()
        fleet = self.fleet = Fleet(store, cfg.offline_after_s)
        spool = UploadSpool(cfg.state_dir / "uploads", artifacts)
        tickets = TicketBook() if cfg.bulk_listen else None
        if cfg.bulk_listen:  # bound first: Register tells agents its port
            limits = BulkLimits(cfg.bulk_max_connections, cfg.handshake_timeout_s)
            self._bulk = BulkServer(self._tls(), limits)
            self.bulk_port = self._bulk.bind(cfg.bulk_listen)
        terms = RegisterTerms(
            cfg.heartbeat_interval_s,
            cfg.poll_wait_s,
            CHUNK_BYTES,
            cfg.max_upload_mb << 20,
            cfg.inline_max_bytes,
            self.bulk_port,
        )
        upload_limits = cfg.upload_limits(terms.max_upload_bytes, terms.chunk_bytes)
        refusals = self.metrics.upload_refusals
        uploads = Uploads(
            spool,
            artifacts,
            fleet,
            store,
            upload_limits,
            lambda r: refusals.labels(r).inc(),
            terms.inline_max_bytes,
        )
        pinned = Pinned()
        collection = Collection(store, artifacts, spool, fleet, uploads.ledger, pinned)
        on_idle = None if cfg.keep_artifacts else collection.in_background
        jobs = self.jobs = JobManager(
            store, artifacts, fleet, self.metrics, JOB_KINDS, on_idle=on_idle
        )
        resumed, failed = jobs.recover()
        for job_id in resumed:
            log.warning("job %s was unfinished when the coordinator stopped: resuming", job_id)
        for job_id in failed:
            log.warning("job %s was unfinished when the coordinator stopped: marked failed", job_id)
        self.metrics.bind_gauges(lambda: len(fleet.online_ids()), fleet.tasks_in_flight)
        policy = self._auth_policy()
        # Labels and job accounting from the authenticated caller and its tasks only.
        accounting = CallAccounting(fleet, jobs.record_bytes)
        interceptor = CountingServerInterceptor(self.metrics.wire, accounting)
        auth = AuthInterceptor(policy, lambda code: self.metrics.rejected_calls.labels(code).inc())
        # Strangers' requests go unread where tokens are the only credential.
        early = EarlyAuthInterceptor(policy, lambda c: self.metrics.rejected_calls.labels(c).inc())
        self._server, self.port = create_server(
            cfg.listen,
            [early, interceptor, auth, PreSerializedResponses(), InternalErrors()],
            self._tls(),
            cfg.server_limits(MAX_MESSAGE_BYTES),
        )
        downloads = Downloads(artifacts, terms.chunk_bytes)
        known = {p.participant_id for p in store.list_participants()}
        pace = HeartbeatPace(
            fleet, cfg.heartbeat_interval_s, cfg.offline_after_s, cfg.max_heartbeats_per_s, known
        )
        requests = ForgetRequests(store, jobs, cfg.auto_approve_forget_requests)
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
            ParticipantServicer(
                fleet,
                uploads,
                downloads,
                terms,
                self.metrics,
                InlineBlobs(artifacts, terms.inline_max_bytes),
                requests,
                tickets,
                pace=pace,
            ),
            self._server,
        )
        if self._bulk is not None and tickets is not None:
            wire, rejected = self.metrics.wire, self.metrics.rejected_results
            deps = BulkDeps(tickets, downloads, uploads, wire, lambda r: rejected.labels(r).inc())
            self._bulk.start(deps)
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            ControlServicer(
                store,
                fleet,
                jobs,
                downloads,
                pinned,
                terms.max_upload_bytes,
                collect=on_idle,
                receipt_key=signing_key(cfg.receipt_key or cfg.state_dir / "receipt.key"),
                requests=requests,
            ),
            self._server,
        )
        # The standard health and reflection services, so probes and grpcurl-style tools work.
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        await self._server.start()
        for service in ("", *SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if cfg.health_listen:
            await self._serve_health(cfg.health_listen)
        self._reaper = asyncio.create_task(self._reap_silent(fleet))
        if cfg.metrics_port >= 0:
            self._http = serve_metrics(
                cfg.metrics_address, cfg.metrics_port, self.registry, self.metrics.per_participant
            )
            self.metrics_port = self._http.server_port
        log.info("coordinator serving on port %d, metrics on %d", self.port, self.metrics_port)
        if cfg.ready_file is not None:
            ready = {
                "port": self.port,
                "metrics_port": self.metrics_port,
                "health_port": self.health_port,
                "bulk_port": self.bulk_port,
            }
            tmp = cfg.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready))
            tmp.replace(cfg.ready_file)

    async def _serve_health(self, address: str) -> None:
        """The same health servicer on a plaintext port: it tells only whether we serve."""
        self._health_server = create_bare_server(self.config.health_limits())
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
        self.health_port = self._health_server.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"could not bind the health port {address}")
        await self._health_server.start()

    def _tls(self) -> TlsFiles | None:
        cfg = self.config
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if cfg.tls_ca is not None and cfg.tls_cert is None:
            raise ValueError("tls_ca (client certificates) needs tls_cert and tls_key")
        return TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if cfg.tls_cert else None

    def _auth_policy(self) -> AuthPolicy:
        cfg = self.config
        tokens = read_auth_file(cfg.auth_file) if cfg.auth_file is not None else None
        policy = AuthPolicy(tokens, client_certs=cfg.tls_ca is not None)
        if not policy.required:
            log.warning(
                "authentication is off (no tls_ca, no auth_file): any caller may act as any "
                "participant or operator; use only for local experiments"
            )
        return policy

    async def _reap_silent(self, fleet: Fleet) -> None:
        """Fail the tasks of participants that stopped beating, well before the deadline."""
        period = max(0.05, min(1.0, self.config.offline_after_s / 4))
        while True:
            await asyncio.sleep(period)
            for pid, task_ids in fleet.reap().items():
                self.metrics.marked_offline.inc()
                log.warning("participant %s went silent: marked offline, failed %s", pid, task_ids)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful: running jobs are marked failed, in-flight calls get grace_s to finish."""
        await self._health.enter_graceful_shutdown()  # probes see NOT_SERVING while we drain
        if self._reaper is not None:
            self._reaper.cancel()
        if self.jobs is not None:
            await self.jobs.shutdown()
        if self._server is not None:
            stopping = asyncio.create_task(self._server.stop(grace_s))  # refuses new calls
            await asyncio.sleep(0)
            if self.fleet is not None:
                self.fleet.shutdown()  # answer open long polls instead of waiting out grace_s
            await stopping
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._bulk is not None:
            await self._bulk.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._store is not None:
            self._store.close()
        log.info("coordinator stopped")
