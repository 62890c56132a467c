"""fusedctl's commands: each takes the parsed flags, talks to the control service, prints."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fused.cli import report
from fused.cli.client import CliError, coordinator, emit
from fused.cli.policy import policy_from_args
from fused.cli.tables import human_bytes, table
from fused.cli.watch import LiveView, event_line, render
from fused.client import Job
from fused.client.records import as_json
from fused.common.domain.records import JobEvent, JobStatus
from fused.common.domain.specs import TrainingSpec, UnlearningSpec, method_config
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.runtime.sample_ids import read_sample_ids

_OPTIMISER_FLAGS = ("local_epochs", "lr", "momentum", "weight_decay", "batch_size")


def add_schedule_options(parser: argparse.ArgumentParser, inherit: bool = False) -> None:
    """The local training and round schedule flags of every job that trains (`train_config`
    reads the first ones back). With `inherit`, the optimiser flags default to the settings
    of the training that began the model's chain (`inherited_train_config`)."""
    defaults = TrainConfig()
    for name in _OPTIMISER_FLAGS:
        value = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(value),
            default=None if inherit else value,
            help="default: the model's training's (lr doubled); give one, all are set"
            if inherit
            else None,
        )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-participants", type=int, default=1)
    parser.add_argument("--round-deadline", type=float, default=300.0, help="seconds")
    parser.add_argument("--wait-participants", type=float, default=60.0, help="seconds")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        args.local_epochs, args.lr, args.momentum, args.weight_decay, args.batch_size, args.seed
    )


def inherited_train_config(args: argparse.Namespace) -> TrainConfig | None:
    """None (the coordinator takes the training's settings) unless a flag is given; then the
    given flags over the defaults."""
    given = {n: getattr(args, n) for n in _OPTIMISER_FLAGS if getattr(args, n) is not None}
    return TrainConfig(**given, seed=args.seed) if given else None


def cmd_train(args: argparse.Namespace) -> int:
    spec = TrainingSpec(
        model=args.model,
        rounds=args.rounds,
        train=train_config(args),
        participants_per_round=args.participants_per_round,
        min_participants=args.min_participants,
        round_deadline_s=args.round_deadline,
        seed=args.seed,
        init_version=args.init_version,
        wait_for_participants_s=args.wait_participants,
        evaluate_each_round=not args.no_eval_each_round,
        policy=policy_from_args(args),
    )
    return start_job(args, coordinator(args).train(spec, args.init_weights))


def start_job(args: argparse.Namespace, job: Job) -> int:
    if not args.wait:
        emit(args, job, lambda: f"started job {job.job_id}")
        return 0
    if not args.json:
        print(f"started job {job.job_id}")
    return _follow(args, job.job_id)


def _sample_ids(path: Path) -> tuple[int, ...]:
    try:
        return read_sample_ids(path)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def forget_from_args(args: argparse.Namespace) -> ForgetSpec:
    if args.participant:
        return ForgetSpec("participant", participant_id=args.participant)
    if args.forget_class is not None:
        return ForgetSpec("class", class_label=args.forget_class, relabel=args.relabel)
    holder, sep, file = args.samples.partition(":")
    if not sep or not holder or not file:
        raise CliError("--samples takes PARTICIPANT:FILE")
    return ForgetSpec(
        "samples",
        participant_id=holder,
        sample_ids=_sample_ids(Path(file)),
        trigger_size=args.trigger_size,
        trigger_target=args.trigger_target,
        relabel=args.relabel,
    )


def cmd_unlearn(args: argparse.Namespace) -> int:
    spec = UnlearningSpec(
        forget=forget_from_args(args),
        base_version=args.base,
        config=method_config(
            args.method,
            {
                "top_k": args.top_k,
                "layers": tuple(n for n in args.layers.split(",") if n),
                "density": args.density,
                "upload_dtype": args.upload_dtype,
                "selection": args.selection,
            },
        ),
        rounds=args.rounds,
        train=inherited_train_config(args),
        min_participants=args.min_participants,
        round_deadline_s=args.round_deadline,
        wait_for_participants_s=args.wait_participants,
        seed=args.seed,
        evaluate_each_round=not args.no_eval_each_round,
        stop_patience=args.stop_patience,
        stop_min_delta=args.stop_min_delta,
        policy=policy_from_args(args),
    )
    return start_job(args, coordinator(args).unlearn(spec))


def cmd_eval(args: argparse.Namespace) -> int:
    asked = args.participant or args.forget_class is not None or args.samples
    forget = forget_from_args(args) if asked else None
    return start_job(args, coordinator(args).evaluate(args.version, forget))


def cmd_layers(args: argparse.Namespace) -> int:
    ranking = coordinator(args).layers(args.job)
    rows = [
        [
            i + 1,
            ("* " if entry.selected else "  ") + entry.name,
            f"{entry.score:.6g}",
            f"{entry.distance:.6g}",
            "-" if entry.forget_distance is None else f"{entry.forget_distance:.6g}",
            entry.numel,
        ]
        for i, entry in enumerate(ranking.layers)
    ]
    header = ["rank", "tensor (* adapted)", "score", "CLI distance", "forget distance", "numel"]
    title = f"selection: {ranking.rule}" + (f" ({ranking.note})" if ranking.note else "")
    emit(args, ranking, lambda: title + "\n" + table(header, rows))
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    client = coordinator(args)
    switch = client.revert if args.command == "revert" else client.reapply
    active = switch(args.version)
    record = active.record
    text = f"now serving {record.version_id} ({record.kind.value}, sha256 {record.digest})"
    emit(args, active, lambda: text)
    return 0


def _follow(args: argparse.Namespace, job_id: str) -> int:
    """Follow a job to its end: JSON lines, a live view on a terminal, or a line per event
    and a closing summary. Exit status 0 only if the job completed."""
    client = coordinator(args)
    job = client.job(job_id)
    kind, spec = job.record.kind.value, job.record.spec
    live = None
    if not args.json and sys.stdout.isatty():
        live = LiveView(sys.stdout, shutil.get_terminal_size().columns)
    events: list[JobEvent] = []
    for event in client.events(job_id):
        events.append(event)
        if args.json:
            print(json.dumps(as_json(event), sort_keys=True), flush=True)
        elif live is not None:
            live.draw(render(job_id, kind, spec, events))
        else:
            print(event_line(event), flush=True)
    if live is None and not args.json:
        print("\n".join(["", *render(job_id, kind, spec, events, recent=0)]), flush=True)
    return 0 if client.job(job_id).status is JobStatus.COMPLETED else 1


def cmd_watch(args: argparse.Namespace) -> int:
    return _follow(args, args.job)


def cmd_report(args: argparse.Namespace) -> int:
    try:  # before any network call: a missing plotting library is the first thing to know
        plt = report.pyplot()
    except report.MissingPlotting as exc:
        raise CliError(str(exc)) from exc
    job = coordinator(args).job(args.job)
    written = report.write_report(plt, job.record, list(job.rounds), args.out)
    payload = {"report": str(written[0]), "plots": [str(p) for p in written[1:]]}
    emit(args, payload, lambda: "wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = coordinator(args).cancel(args.job)
    record = job.record
    emit(args, job, lambda: f"job {record.job_id}: {record.status.value} ({record.reason})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.adapter and args.version:
        raise CliError("give the version once: either VERSION or --adapter VERSION")
    client = coordinator(args)
    if args.adapter:
        done = client.export_adapter(args.out, args.adapter)
    else:
        done = client.export(args.out, args.version)
    payload = {"path": str(done.path), "sha256": done.sha256, "bytes": done.size}
    text = f"wrote {done.path} ({human_bytes(done.size)}, sha256 {done.sha256})"
    emit(args, payload, lambda: text)
    return 0


def cmd_apply_adapter(args: argparse.Namespace) -> int:
    # Imported here: torch loads slowly and only this command needs it.
    from fused.client.adapters import apply_adapter

    done = apply_adapter(args.base, args.adapter, args.out)
    payload = {"path": str(done.path), "sha256": done.sha256, "changed": done.changed}
    text = f"wrote {done.path} ({done.changed} positions changed, sha256 {done.sha256})"
    emit(args, payload, lambda: text)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    # Imported here: torch loads slowly and no other command needs it.
    from fused.common.ml.data.partition import partition_to_directory
    from fused.common.ml.data.partition_config import PartitionConfig

    config = PartitionConfig(
        num_participants=args.participants,
        alpha=args.alpha,
        seed=args.seed,
        test_fraction=args.test_fraction,
        attacker=args.attacker,
        backdoor_participant=args.backdoor_participant,
        backdoor_count=args.backdoor_count,
        backdoor_target=args.backdoor_target,
        trigger_size=args.trigger_size,
    )
    try:
        summary = partition_to_directory(args.dataset, args.data_dir, args.out, config)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    def text() -> str:
        rows = [
            [
                p["id"],
                p["train_size"],
                p["test_size"],
                "yes" if p.get("attacker") else "",
                p.get("backdoor_count", 0) or "",
            ]
            for p in summary["participants"]
        ]
        return f"wrote {args.out}\n" + table(
            ["participant", "train", "test", "attacker", "backdoor"], rows
        )

    emit(args, summary, text)
    return 0
