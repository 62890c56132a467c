"""`fusedctl`: the operators' command line client of the coordinator's control service."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from fused.cli import certs
from fused.cli.client import DEFAULT_COORDINATOR, CliError
from fused.cli.commands import (
    add_schedule_options,
    cmd_apply_adapter,
    cmd_cancel,
    cmd_eval,
    cmd_export,
    cmd_layers,
    cmd_partition,
    cmd_report,
    cmd_switch,
    cmd_train,
    cmd_unlearn,
    cmd_watch,
)
from fused.cli.ledger import add_ledger_parsers
from fused.cli.listings import (
    add_model_commands,
    cmd_jobs,
    cmd_models,
    cmd_participants,
    cmd_status,
)
from fused.cli.participants import add_participant_commands
from fused.cli.policy import add_policy_options
from fused.cli.receipts import add_receipt_parsers
from fused.client import CoordinatorError, LocalError
from fused.common.domain.specs import (
    DEFAULT_STOP_MIN_DELTA,
    DEFAULT_STOP_PATIENCE,
    DEFAULT_UNLEARNING_ROUNDS,
    METHOD_CONFIGS,
    UPLOAD_DTYPES,
    FusedConfig,
)


class _Parser(argparse.ArgumentParser):
    """Every command's parser takes the global flags too, so they may come before or after
    the command (`fusedctl models --json`). Below the top the default is SUPPRESS: a value
    given before the command is kept, not reset."""

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_flags(self, top)


def _global_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--coordinator",
        default=default(os.environ.get("FUSED_COORDINATOR", DEFAULT_COORDINATOR)),
        help="coordinator address host:port (env FUSED_COORDINATOR)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    for flag, help_text in (
        ("--tls-ca", "CA that signed the coordinator's certificate: turns TLS on"),
        ("--tls-cert", "operator client certificate (mutual TLS)"),
        ("--tls-key", "its private key"),
        ("--token-file", "file holding the operator's bearer token"),
    ):
        # FUSEDCTL_*, not FUSED_*: the agent's own variables must not make fusedctl present
        # a participant's credentials on a participant host.
        env = "FUSEDCTL_" + flag[2:].upper().replace("-", "_")
        value = os.environ.get(env)
        parser.add_argument(
            flag,
            type=Path,
            default=default(Path(value) if value else None),
            help=f"{help_text} (env {env})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fusedctl", description="Operate a FUSED federation.", top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    certs.add_parser(sub)

    train = sub.add_parser("train", help="start a federated training job")
    train.add_argument(
        "--model",
        default="",
        help="workload (built-in name, installed entry point or module:attribute) whose model "
        "is built here from --seed; default: the one most online participants serve",
    )
    train.add_argument("--rounds", type=int, default=10)
    add_schedule_options(train)
    train.add_argument("--participants-per-round", type=int, default=0, help="0 = all online")
    train.add_argument("--init-version", default="", help="start from this model version")
    train.add_argument(
        "--init-weights",
        type=Path,
        default=None,
        help="start from these weights (safetensors) instead of building the model here",
    )
    train.add_argument("--no-eval-each-round", action="store_true")
    train.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_policy_options(train)
    train.set_defaults(func=cmd_train)

    unlearn = sub.add_parser("unlearn", help="forget a participant, a class or samples")
    _forget_options(unlearn, required=True)
    unlearn.add_argument("--method", choices=list(METHOD_CONFIGS), default="fused")
    unlearn.add_argument("--base", default="", help="version to unlearn from; default: active")
    fused = FusedConfig()
    unlearn.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_UNLEARNING_ROUNDS,
        help="at most (see --stop-patience)",
    )
    unlearn.add_argument(
        "--stop-patience",
        type=int,
        default=DEFAULT_STOP_PATIENCE,
        help="stop once FA has not fallen for this many rounds; 0 = run every round",
    )
    unlearn.add_argument(
        "--stop-min-delta",
        type=float,
        default=DEFAULT_STOP_MIN_DELTA,
        help="a fall by less than this fraction of the lowest FA so far does not count",
    )
    add_schedule_options(unlearn, inherit=True)
    unlearn.add_argument("--top-k", type=int, default=fused.top_k, help="fused: tensors to adapt")
    unlearn.add_argument("--layers", default="", help="fused: comma-separated tensor names")
    unlearn.add_argument(
        "--density", type=float, default=fused.density, help="fused: mask density rho"
    )
    unlearn.add_argument(
        "--selection",
        default=fused.selection,
        help="fused: how tensors are chosen: cli (the paper's: where training moves most), "
        "forget (where the forgotten data moves them most, against the rest), combined",
    )
    unlearn.add_argument(
        "--upload-dtype",
        choices=UPLOAD_DTYPES,
        default="float32",
        help="fused: precision of adapter uploads",
    )
    unlearn.add_argument("--no-eval-each-round", action="store_true")
    unlearn.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_policy_options(unlearn)
    unlearn.set_defaults(func=cmd_unlearn)

    evaluate = sub.add_parser("eval", help="federated evaluation of a model version (RA/FA)")
    evaluate.add_argument("version", nargs="?", default="", help="default: the active version")
    _forget_options(evaluate, required=False)
    evaluate.add_argument("--wait", action="store_true", help="follow the job until it ends")
    evaluate.set_defaults(func=cmd_eval)

    layers = sub.add_parser("layers", help="a FUSED job's sensitivity ranking")
    layers.add_argument("job")
    layers.set_defaults(func=cmd_layers)
    for name, help_text in (
        ("revert", "serve the version's parent again (exact)"),
        ("reapply", "serve the version again (exact)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("version")
        p.set_defaults(func=cmd_switch)

    for name, func, help_text in (
        ("status", cmd_status, "a job's state and rounds"),
        ("watch", cmd_watch, "follow a job live: progress per phase, bytes, RA/FA"),
        ("cancel", cmd_cancel, "stop a running job (its open tasks close; it ends failed)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job")
        p.set_defaults(func=func)
    report = sub.add_parser("report", help="a job as Markdown with PNG plots (needs matplotlib)")
    report.add_argument("job")
    report.add_argument("--out", type=Path, required=True, help="directory to write into")
    report.set_defaults(func=cmd_report)
    sub.add_parser("jobs", help="list jobs").set_defaults(func=cmd_jobs)
    participants = sub.add_parser(
        "participants", help="list participants; remove, block or unblock one"
    )
    participants.set_defaults(func=cmd_participants)
    add_participant_commands(participants)
    models = sub.add_parser("models", help="list model versions; drop some")
    models.set_defaults(func=cmd_models)
    add_model_commands(models)
    add_ledger_parsers(sub)

    export = sub.add_parser(
        "export", help="download a model version, or an adapter version's adapter file"
    )
    export.add_argument("version", nargs="?", default="", help="default: the active version")
    export.add_argument(
        "--adapter",
        default="",
        metavar="VERSION",
        help="write VERSION's portable adapter file instead (docs/ADAPTER_FILE.md)",
    )
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=cmd_export)
    apply = sub.add_parser(
        "apply-adapter",
        help="apply an adapter file to its base model file (checks both sha256 it names)",
    )
    apply.add_argument("base", type=Path)
    apply.add_argument("adapter", type=Path)
    apply.add_argument("--out", type=Path, required=True)
    apply.set_defaults(func=cmd_apply_adapter)

    add_receipt_parsers(sub)

    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="data", required=True)
    part = data.add_parser("partition", help="split a data set into participant shards")
    part.add_argument("--dataset", default="digits", help="digits, fashionmnist or cifar10")
    part.add_argument("--data-dir", type=Path, default=None, help="where the raw files are")
    part.add_argument("--participants", type=int, required=True)
    part.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration")
    part.add_argument("--seed", type=int, default=0)
    part.add_argument("--test-fraction", type=float, default=0.2)
    part.add_argument("--attacker", type=int, default=None, help="index of a label flipper")
    part.add_argument("--backdoor-participant", type=int, default=None)
    part.add_argument("--backdoor-count", type=int, default=0)
    part.add_argument("--backdoor-target", type=int, default=0)
    part.add_argument("--trigger-size", type=int, default=1)
    part.add_argument("--out", type=Path, required=True)
    part.set_defaults(func=cmd_partition)
    return parser


def _forget_options(parser: argparse.ArgumentParser, required: bool) -> None:
    what = parser.add_mutually_exclusive_group(required=required)
    what.add_argument("--participant", help="forget everything this participant contributed")
    what.add_argument("--class", dest="forget_class", type=int, help="forget a label everywhere")
    what.add_argument("--samples", help="PARTICIPANT:FILE, the sample ids to forget")
    parser.add_argument(
        "--relabel",
        action="store_true",
        help="--class, --samples: relabel at random instead of dropping (research code)",
    )
    parser.add_argument(
        "--trigger-size",
        type=int,
        default=0,
        help="--samples: the samples are a backdoor with this trigger size",
    )
    parser.add_argument("--trigger-target", type=int, default=0, help="--samples: its label")


_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "is fused-coordinator running there? (--coordinator or "
    "FUSED_COORDINATOR)",
    grpc.StatusCode.UNAUTHENTICATED: "pass the operator's credentials: --token-file, or "
    "--tls-ca with --tls-cert/--tls-key (made by `fusedctl certs init`)",
    grpc.StatusCode.PERMISSION_DENIED: "control calls need an operator credential, not a "
    "participant's",
    grpc.StatusCode.NOT_FOUND: "list what exists with `fusedctl jobs` or `fusedctl models`",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the coordinator did not answer in time: is it "
    "overloaded, or is a proxy on the way holding the call?",
    grpc.StatusCode.DATA_LOSS: "a stored artifact is damaged: restore the state directory's "
    "artifacts/ from a backup (docs/OPERATIONS.md)",
}
# Words of a failed TLS handshake in grpc's UNAVAILABLE details: the daemon is there.
_TLS_TROUBLE = ("ssl", "handshake", "hostname verification", "socket closed", "certificate")
_TLS_HINT = (
    "the TLS handshake failed: does the coordinator use TLS (then pass --tls-ca; with mutual "
    "TLS also --tls-cert/--tls-key), and does its certificate name the host you dial?"
)
# Commands whose argument is a job: a NOT_FOUND there means the job id.
_JOB_COMMANDS = {"status", "watch", "report", "layers", "cancel"}


def rpc_error_message(exc: CoordinatorError, command: str, coordinator: str) -> str:
    """One line naming the failure, then a hint line when there is something to do."""
    code, details = exc.code, exc.message
    hint = _HINTS.get(code, "")
    if code is grpc.StatusCode.NOT_FOUND and command in _JOB_COMMANDS:
        hint = "list the jobs with `fusedctl jobs`"
    if code is grpc.StatusCode.NOT_FOUND and command == "participants":
        hint = "list the participants with `fusedctl participants`"
    if code is grpc.StatusCode.UNAVAILABLE and any(w in details.lower() for w in _TLS_TROUBLE):
        hint = _TLS_HINT
    where = f" at {coordinator}" if code is grpc.StatusCode.UNAVAILABLE else ""
    return f"fusedctl: {code.name}{where}: {details}" + (f"\n  hint: {hint}" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CoordinatorError as exc:
        print(rpc_error_message(exc, args.command, args.coordinator), file=sys.stderr)
    except (CliError, LocalError) as exc:
        print(f"fusedctl: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
