"""fusedctl's read-only views of the coordinator's state: a job's status and the jobs,
participants and model versions, as tables (or JSON with --json)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fused.cli.client import coordinator, emit
from fused.cli.tables import human_bytes, table, when
from fused.client.records import Participant, Version
from fused.common.domain.records import RoundRecord
from fused.common.domain.tasks import ForgetSpec


def cmd_status(args: argparse.Namespace) -> int:
    job = coordinator(args).job(args.job)
    record = job.record

    def text() -> str:
        head = (
            f"job {record.job_id} ({record.kind}): {record.status.value}"
            f"{', ' + record.phase + ' round ' + str(record.round) if record.phase else ''}\n"
            f"{record.reason}\n"
        )
        rows = [round_row(r) for r in job.rounds]
        return head + table(ROUND_COLUMNS, rows)

    emit(args, job, text)
    return 0


# "compute s" and "xfer s": the slowest participant's local work and its transfers (fetch and
# upload), as its agent measured them; "-" where the round recorded no timings
ROUND_COLUMNS = ["phase", "round", "parts", "accuracy", "loss", "bytes", "s", "compute s", "xfer s"]


def round_row(r: RoundRecord) -> list[Any]:
    m = r.metrics
    slowest = max(m.timings.values(), key=lambda t: t.total_s, default=None)
    return [
        r.phase,
        r.round,
        len(r.participants),
        f"{m.evaluation.accuracy:.4f}" if m.evaluation is not None else "-",
        f"{m.aggregate.train_loss:.4f}" if m.aggregate is not None else "-",
        human_bytes(m.bytes.total if m.bytes is not None else 0),
        f"{m.seconds:.1f}",
        f"{slowest.compute_s:.2f}" if slowest is not None else "-",
        f"{slowest.fetch_s + slowest.upload_s:.2f}" if slowest is not None else "-",
    ]


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = coordinator(args).jobs()
    rows = [
        [
            j.job_id,
            j.record.kind,
            j.status.value,
            f"{j.record.phase} {j.record.round}".strip(),
            when(j.record.created_at),
            j.record.reason[:60],
        ]
        for j in jobs
    ]
    emit(args, jobs, lambda: table(["job", "kind", "status", "at", "created", "reason"], rows))
    return 0


def cmd_participants(args: argparse.Namespace) -> int:
    participants = coordinator(args).participants()
    rows = [
        [
            p.participant_id,
            "blocked" if p.blocked else ("online" if p.online else "offline"),
            _workload(p),
            p.record.offer("dataset"),
            p.record.num_train,
            p.record.num_test,
            when(p.record.last_seen),
        ]
        for p in participants
    ]
    header = ["participant", "state", "workload", "dataset", "train", "test", "last seen"]
    emit(args, participants, lambda: table(header, rows))
    return 0


def _workload(p: Participant) -> str:
    """The workload and its schema digest's first digits, or that it cannot run there."""
    offer = p.record.offer
    if offer("workload_error"):
        return f"{offer('workload')} (cannot run: see --json)"
    if not offer("workload"):
        return "-"
    return f"{offer('workload')} {offer('workload_version')} ({offer('schema_digest')[:8]})"


def version_tree(versions: Sequence[Version]) -> list[tuple[str, Version]]:
    """Versions depth first under their parents: (indented name, version)."""
    ids = {v.version_id for v in versions}
    children: dict[str, list[Version]] = {}
    for v in versions:
        parent = v.record.parent_id
        children.setdefault(parent if parent in ids else "", []).append(v)
    out: list[tuple[str, Version]] = []

    def walk(parent: str, depth: int) -> None:
        for v in children.get(parent, []):
            out.append(("  " * depth + ("└ " if depth else "") + v.version_id, v))
            walk(v.version_id, depth + 1)

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
    dropped = coordinator(args).drop_versions(args.versions)
    emit(args, dropped, lambda: f"dropped {', '.join(dropped)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    versions = coordinator(args).versions()
    rows = [
        [
            ("* " if v.active else "  ") + name,
            v.record.kind.value,
            v.record.model,
            v.record.job_id or "-",
            v.record.num_params,
            v.record.digest[:12],
            ",".join(v.record.meta.forgets) or "-",
            when(v.record.created_at),
        ]
        for name, v in version_tree(versions)
    ]
    header = ["version (* active)", "kind", "model", "job", "params", "sha256", "forgets"]
    emit(args, versions, lambda: table([*header, "created"], rows))
    return 0


def forgotten(f: ForgetSpec) -> str:
    """A request in a few words: participant p0, class 3, 50 samples of p1."""
    if f.paradigm == "participant":
        return f"participant {f.participant_id}"
    if f.paradigm == "class":
        return f"class {f.class_label}"
    backdoor = f" (backdoor -> {f.trigger_target})" if f.trigger_size else ""
    return f"{len(f.sample_ids)} samples of {f.participant_id}{backdoor}"
