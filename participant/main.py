"""`fused-participant`: run a participant agent serving one workload on its local data."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, start_http_server

from fused.common.ml.data.shards import read_shard_meta
from fused.common.ml.workloads import WorkloadError
from fused.common.rpc.channels import TlsFiles
from fused.common.rpc.identity import read_token_file
from fused.common.rpc.metering import disable_created_series
from fused.common.runtime.config import ConfigError, load_config
from fused.common.runtime.logs import setup_logging
from fused.common.runtime.sample_ids import read_sample_ids
from fused.participant.agent import Agent, AgentSettings, ParticipantMetrics
from fused.participant.forgetting_request import request_forgetting
from fused.participant.retry import RegistrationRefused
from fused.participant.site import Offer, Site, broken_offer, default_reference, offer_of, open_site
from fused.participant.training import resolve_hardware, use_hardware
from fused.participant.warmup import warm_up_logged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParticipantConfig:
    data_dir: Path = dataclasses.field(
        default=Path("shard"), metadata={"help": "this participant's data directory"}
    )
    workload: str = dataclasses.field(
        default="",
        metadata={
            "help": "workload to serve: a built-in (mlp, lenet, resnet18), an installed "
            "fused.workloads entry point or module:attribute; default: the built-in for a "
            "partition shard"
        },
    )
    coordinator: str = dataclasses.field(
        default="127.0.0.1:50051", metadata={"help": "coordinator address host:port"}
    )
    participant_id: str = dataclasses.field(
        default="", metadata={"help": "required unless the data directory is a partition shard"}
    )
    metrics_address: str = "127.0.0.1"
    metrics_port: int = dataclasses.field(
        default=-1, metadata={"help": "Prometheus endpoint port; 0 picks one, -1 disables"}
    )
    # cpu by default: an upgrade never moves an existing fleet off bit-identical CPU reruns
    device: str = dataclasses.field(
        default="cpu",
        metadata={"help": "where to train and evaluate: auto, cpu, cuda, cuda:N or mps"},
    )
    amp: bool = dataclasses.field(
        default=False,
        metadata={"help": "mixed precision on CUDA: bfloat16, or float16 with loss scaling"},
    )
    threads: int = dataclasses.field(
        default=1, metadata={"help": "torch CPU threads; 0 keeps torch's default"}
    )
    backoff_max_s: float = 30.0
    ready_file: Path | None = dataclasses.field(
        default=None, metadata={"help": "write the metrics port here as JSON once started"}
    )
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = dataclasses.field(
        default=None, metadata={"help": "file holding this participant's bearer token"}
    )
    forget_me: bool = dataclasses.field(
        default=False,
        metadata={"help": "ask the coordinator to forget this participant, then exit"},
    )
    forget_samples: Path | None = dataclasses.field(
        default=None,
        metadata={"help": "ask it to forget these of this participant's sample ids, then exit"},
    )
    skip_warmup: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "skip the training step at start that keeps torch's first-step set-up out "
            "of the first task"
        },
    )
    log_level: str = "info"
    log_json: bool = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(
            ParticipantConfig,
            argv,
            prog="fused-participant",
            section="participant",
            description="FUSED participant agent",
        )
        if cfg.threads < 0:
            raise ConfigError(f"threads must be 0 (torch's default) or more, got {cfg.threads}")
        hardware, hardware_notes = resolve_hardware(cfg.device, cfg.amp)
        reference = cfg.workload or default_reference(cfg.data_dir)
        participant_id = cfg.participant_id or _shard_participant(cfg.data_dir)
        token = read_token_file(cfg.token_file) if cfg.token_file is not None else None
        if (cfg.tls_cert or cfg.tls_key) and not cfg.tls_ca:
            raise ConfigError("tls_cert/tls_key need tls_ca (the CA that signed the coordinator)")
        if cfg.forget_me and cfg.forget_samples is not None:
            raise ConfigError("ask for one: --forget-me or --forget-samples")
        samples = read_sample_ids(cfg.forget_samples) if cfg.forget_samples else ()
    except (ConfigError, ValueError, OSError) as exc:
        print(f"fused-participant: {exc}", file=sys.stderr)
        return 2
    if cfg.forget_me or samples:
        tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if cfg.tls_ca else None
        return request_forgetting(cfg.coordinator, participant_id, samples, tls, token)
    setup_logging(cfg.log_level, cfg.log_json, "participant")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    use_hardware(hardware)
    for note in hardware_notes:
        log.warning("%s", note)
    amp = str(hardware.amp_dtype).removeprefix("torch.") if hardware.amp_dtype else "off"
    log.info(
        "training on %s (amp %s, %d CPU threads)", hardware.device, amp, torch.get_num_threads()
    )
    disable_created_series()
    registry = CollectorRegistry()
    metrics = ParticipantMetrics(registry)
    port = 0
    if cfg.metrics_port >= 0:
        http, _ = start_http_server(cfg.metrics_port, cfg.metrics_address, registry=registry)
        port = http.server_port
    if cfg.ready_file is not None:  # atomically: a reader never sees it half written
        tmp = cfg.ready_file.with_suffix(".tmp")
        tmp.write_text(f'{{"metrics_port": {port}}}')
        tmp.replace(cfg.ready_file)
    tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if cfg.tls_ca else None
    settings = AgentSettings(
        coordinator=cfg.coordinator,
        participant_id=participant_id,
        tls=tls,
        token=token,
        backoff_max_s=cfg.backoff_max_s,
    )
    site, offer = _open(participant_id, reference, cfg.data_dir)
    if site is not None and not cfg.skip_warmup:
        warm_up_logged(site)  # before registering: no task waits for it
    agent = Agent(settings, site, offer, metrics)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.shutdown())
    try:
        agent.run()
    except RegistrationRefused as exc:  # refused for good, e.g. an invalid participant id
        print(f"fused-participant: registration refused: {exc}", file=sys.stderr)
        return 2
    return 0


def _shard_participant(data_dir: Path) -> str:
    try:
        return read_shard_meta(data_dir).participant_id
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"give --participant-id (no partition shard in {data_dir}: {exc})"
        ) from exc


def _open(participant_id: str, reference: str, data_dir: Path) -> tuple[Site | None, Offer]:
    """The workload on this data and its offer; a workload that cannot run is logged and
    offered with its cause, so the agent still registers and the coordinator can report it."""
    try:
        site = open_site(participant_id, reference, data_dir)
        offer = offer_of(site)
    except WorkloadError as exc:
        log.error("%s", exc)
        return None, broken_offer(reference, str(exc))
    log.info(
        "serving workload %s %s (%d classes, %d train / %d test samples, schema %s)",
        offer.workload,
        offer.version,
        offer.num_classes,
        offer.num_train,
        offer.num_test,
        offer.schema_digest[:12],
    )
    return site, offer


if __name__ == "__main__":
    sys.exit(main())
