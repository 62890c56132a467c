"""fusedctl's read-only views of the coordinator's state: a job's status and the jobs,
participants and model versions, as tables (or JSON with --json)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from fused.cli.client import as_dict, control_stub, emit
from fused.cli.tables import human_bytes, table, when
from fused.common.domain.records import RoundRecord
from fused.common.rpc.control_convert import job_from_proto
from fused.proto.v1 import common_pb2, control_pb2


def cmd_status(args: argparse.Namespace) -> int:
    info = control_stub(args).GetJob(control_pb2.GetJobRequest(job_id=args.job), timeout=30)
    job, rounds = job_from_proto(info)

    def text() -> str:
        head = (
            f"job {job.job_id} ({job.kind}): {job.status.value}"
            f"{', ' + job.phase + ' round ' + str(job.round) if job.phase else ''}\n"
            f"{job.reason}\n"
        )
        rows = [_round_row(r) for r in rounds]
        return head + table(["phase", "round", "parts", "accuracy", "loss", "bytes", "s"], rows)

    emit(args, as_dict(info), text)
    return 0


def _round_row(r: RoundRecord) -> list[Any]:
    m = r.metrics
    return [
        r.phase,
        r.round,
        len(r.participants),
        f"{m.evaluation.accuracy:.4f}" if m.evaluation is not None else "-",
        f"{m.aggregate.train_loss:.4f}" if m.aggregate is not None else "-",
        human_bytes(m.bytes.total if m.bytes is not None else 0),
        f"{m.seconds:.1f}",
    ]


def cmd_jobs(args: argparse.Namespace) -> int:
    reply = control_stub(args).ListJobs(control_pb2.ListJobsRequest(), timeout=30)
    rows = [
        [
            j.job_id,
            j.kind,
            j.status,
            f"{j.phase} {j.round}".strip(),
            when(j.created_at),
            j.reason[:60],
        ]
        for j in reply.jobs
    ]
    emit(
        args,
        as_dict(reply).get("jobs", []),
        lambda: table(["job", "kind", "status", "at", "created", "reason"], rows),
    )
    return 0


def cmd_participants(args: argparse.Namespace) -> int:
    reply = control_stub(args).ListParticipants(control_pb2.ListParticipantsRequest(), timeout=30)
    rows = [
        [
            p.participant_id,
            "blocked" if p.blocked else ("online" if p.online else "offline"),
            _workload(p),
            p.dataset,
            p.num_train,
            p.num_test,
            when(p.last_seen),
        ]
        for p in reply.participants
    ]
    emit(
        args,
        as_dict(reply).get("participants", []),
        lambda: table(
            ["participant", "state", "workload", "dataset", "train", "test", "last seen"], rows
        ),
    )
    return 0


def _workload(p: control_pb2.ParticipantInfo) -> str:
    """The workload and its schema digest's first digits, or that it cannot run there."""
    if p.workload_error:
        return f"{p.workload} (cannot run: see --json)"
    return f"{p.workload} {p.workload_version} ({p.schema_digest[:8]})" if p.workload else "-"


def version_tree(models: Sequence[control_pb2.ModelVersionInfo]) -> list[tuple[str, Any]]:
    """Versions depth first under their parents: (indented name, version)."""
    ids = {m.version_id for m in models}
    children: dict[str, list[control_pb2.ModelVersionInfo]] = {}
    for m in models:
        children.setdefault(m.parent_id if m.parent_id in ids else "", []).append(m)
    out: list[tuple[str, Any]] = []

    def walk(parent: str, depth: int) -> None:
        for m in children.get(parent, []):
            out.append(("  " * depth + ("└ " if depth else "") + m.version_id, m))
            walk(m.version_id, depth + 1)

    walk("", 0)
    return out


def add_model_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="{drop}")
    drop = sub.add_parser(
        "drop",
        help="delete versions (e.g. a chain a consolidation replaced): their weights are "
        "collected once no kept version names them; never the served one",
    )
    drop.add_argument("versions", nargs="+")
    drop.set_defaults(func=cmd_drop)


def cmd_drop(args: argparse.Namespace) -> int:
    request = control_pb2.DropVersionsRequest(version_ids=args.versions)
    reply = control_stub(args).DropVersions(request, timeout=30)
    emit(args, list(reply.dropped), lambda: f"dropped {', '.join(reply.dropped)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    reply = control_stub(args).ListModels(control_pb2.ListModelsRequest(), timeout=30)
    rows = [
        [
            ("* " if m.active else "  ") + name,
            m.kind,
            m.model,
            m.job_id or "-",
            m.num_params,
            m.digest[:12],
            ",".join(json.loads(m.meta_json or "{}").get("forgets", [])) or "-",
            when(m.created_at),
        ]
        for name, m in version_tree(reply.models)
    ]
    header = ["version (* active)", "kind", "model", "job", "params", "sha256", "forgets"]
    emit(args, as_dict(reply).get("models", []), lambda: table([*header, "created"], rows))
    return 0


def forgotten(f: common_pb2.ForgetSpec) -> str:
    """A request in a few words: participant p0, class 3, 50 samples of p1."""
    if f.paradigm == "participant":
        return f"participant {f.participant_id}"
    if f.paradigm == "class":
        return f"class {f.class_label}"
    backdoor = f" (backdoor -> {f.trigger_target})" if f.trigger_size else ""
    return f"{len(f.sample_ids)} samples of {f.participant_id}{backdoor}"
