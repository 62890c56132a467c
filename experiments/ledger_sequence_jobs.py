"""The control-protocol steps of `experiments.ledger_sequence`: start an unlearning job and
wait for it, evaluate a version under a forget spec, export a version's SHA-256, switch the
served version. Every call goes to a real coordinator through its control service."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.job_records import bytes_per_round, export, run_job
from fused.common.domain.specs import UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.common.rpc.task_convert import forget_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation

EVAL_DEADLINE_S = 600.0


@dataclass(frozen=True)
class Produced:
    """A version a job produced, as measured right after the job."""

    version_id: str
    parent_id: str
    sha256: str  # of ExportModel(version_id) right after the job
    digest: str  # the coordinator's own record of the version's artifact
    seconds: float  # the job's, created to last update
    bytes_per_round: float  # mean bytes a training participant moved per round of its phase
    result: dict[str, Any]  # the job's result (federated RA/FA before and after, layers...)

    def to_dict(self) -> dict[str, Any]:
        keep = (
            "ra_before",
            "fa_before",
            "ra_after",
            "fa_after",
            "critical_layers",
            "adapter_params",
            "ledger_entry",
            "ledger_entries",
            "base_version",
        )
        return {
            "version_id": self.version_id,
            "parent_id": self.parent_id,
            "sha256": self.sha256,
            "sha256_is_digest": self.sha256 == self.digest,
            "seconds": self.seconds,
            "bytes_per_round": self.bytes_per_round,
            "job": {k: self.result[k] for k in keep if k in self.result},
        }


def sha256_of(fed: LocalFederation, version_id: str = "") -> str:
    """SHA-256 of ExportModel: of `version_id`, or of the active version ("")."""
    return hashlib.sha256(export(fed, version_id)).hexdigest()


def models(fed: LocalFederation) -> dict[str, control_pb2.ModelVersionInfo]:
    reply = fed.control().ListModels(control_pb2.ListModelsRequest(), timeout=30)
    return {m.version_id: m for m in reply.models}


def active_id(fed: LocalFederation) -> str:
    return next((v for v, m in models(fed).items() if m.active), "")


def produced(fed: LocalFederation, info: control_pb2.JobInfo, phase: str) -> Produced:
    result: dict[str, Any] = json.loads(info.result_json)
    version_id = str(result["version_id"])
    record = models(fed)[version_id]
    return Produced(
        version_id=version_id,
        parent_id=record.parent_id,
        sha256=sha256_of(fed, version_id),
        digest=record.digest,
        seconds=info.updated_at - info.created_at,
        bytes_per_round=bytes_per_round(info, phase),
        result=result,
    )


def unlearn(fed: LocalFederation, spec: UnlearningSpec) -> Produced:
    """Run one FUSED unlearning job to its end (it fails loudly otherwise)."""
    request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
    info = run_job(fed, fed.control().StartUnlearning(request, timeout=60))
    return produced(fed, info, "adapter")


def evaluate(fed: LocalFederation, version_id: str, forget: ForgetSpec) -> dict[str, float | None]:
    """RA and FA of a version under `forget`, by a federated evaluation job (what
    `fusedctl eval VERSION --participant/--class/--samples` starts). RA is counted on the
    participants' test splits without what the forget ledger holds when the job starts."""
    request = control_pb2.StartEvaluationRequest(
        version_id=version_id, forget=forget_to_proto(forget), round_deadline_s=EVAL_DEADLINE_S
    )
    info = run_job(fed, fed.control().StartEvaluation(request, timeout=60))
    result = json.loads(info.result_json)
    fa = result.get("fa")
    return {"ra": float(result["ra"]), "fa": None if fa is None else float(fa)}


def evaluate_all(
    fed: LocalFederation, version_id: str, requests: dict[str, ForgetSpec]
) -> dict[str, Any]:
    """RA (under the first request's spec) and the FA of every request."""
    figures = {name: evaluate(fed, version_id, spec) for name, spec in requests.items()}
    ras = [f["ra"] for f in figures.values() if f["ra"] is not None]
    return {
        "ra": ras[0],
        "ra_spread": max(ras) - min(ras),  # 0 when the ledger already holds every request
        **{f"fa_{name}": f["fa"] for name, f in figures.items()},
    }


def revert(fed: LocalFederation, version_id: str) -> str:
    """Serve the parent of `version_id`; returns the id now served."""
    reply = fed.control().Revert(control_pb2.VersionRequest(version_id=version_id), timeout=30)
    return str(reply.version_id)


def reapply(fed: LocalFederation, version_id: str) -> str:
    """Serve `version_id` (any stored version: the control service's 'set active')."""
    reply = fed.control().Reapply(control_pb2.VersionRequest(version_id=version_id), timeout=30)
    return str(reply.version_id)


def ledger(fed: LocalFederation) -> list[dict[str, str]]:
    entries = fed.control().ListLedger(control_pb2.ListLedgerRequest(), timeout=30).entries
    return [
        {
            "entry_id": e.entry_id,
            "paradigm": e.forget.paradigm,
            "status": e.status,
            "version_id": e.version_id,
        }
        for e in entries
    ]


def restart_participants(fed: LocalFederation, shards: Path, timeout_s: float = 600) -> None:
    """Stop every participant process and start it again under the same identity. An agent
    caches the artifacts it downloaded (in memory), so without this the union strategy's R1,
    the same job as the stack's R1, would find its adapter values cached and move fewer bytes.
    Returns once every new process has registered (its record's last_seen is newer)."""
    since = time.time()
    names = list(fed.participants)
    for proc in fed.participants.values():  # signal all first: they stop in parallel
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name in names:
        fed.stop_participant(name)
    for name in names:
        fed.start_participant(shards / name)
    deadline = time.monotonic() + timeout_s
    stub = fed.control()
    while True:
        reply = stub.ListParticipants(control_pb2.ListParticipantsRequest(), timeout=10)
        fresh = {p.participant_id for p in reply.participants if p.online and p.last_seen > since}
        if fresh >= set(names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(fresh)} of {names} registered again")
        time.sleep(0.2)
