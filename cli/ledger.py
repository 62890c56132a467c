"""The forget ledger's commands: list it, withdraw a request, consolidate the requests into a
retrained base."""

from __future__ import annotations

import argparse
from typing import Any

from fused.cli.client import coordinator, emit
from fused.cli.commands import add_schedule_options, start_job, train_config
from fused.cli.listings import forgotten
from fused.cli.policy import add_policy_options, policy_from_args
from fused.cli.tables import table, when
from fused.common.domain.specs import ConsolidationSpec


def add_ledger_parsers(sub: Any) -> None:
    """`fusedctl ledger [withdraw ENTRY]` and `fusedctl consolidate` on the top-level parsers."""
    ledger = sub.add_parser("ledger", help="the forget ledger: every applied unlearning request")
    ledger.set_defaults(func=cmd_ledger)
    commands = ledger.add_subparsers(dest="ledger_command", metavar="{withdraw}")
    withdraw = commands.add_parser(
        "withdraw",
        help="take a request back: later jobs use its data again, and the served model comes "
        "to forget exactly the remaining requests",
    )
    withdraw.add_argument("entry")
    withdraw.add_argument(
        "--keep-version", action="store_true", help="only mark it; keep serving what is served"
    )
    withdraw.set_defaults(func=cmd_withdraw)
    _add_requests(sub)
    _add_consolidate(sub)


def _add_requests(sub: Any) -> None:
    requests = sub.add_parser(
        "requests", help="participants' own forgetting requests; approve or reject one"
    )
    requests.set_defaults(func=cmd_requests)
    decide = requests.add_subparsers(dest="requests_command", metavar="{approve,reject}")
    approve = decide.add_parser("approve", help="start the request's unlearning job")
    approve.add_argument("request")
    approve.add_argument("--wait", action="store_true", help="follow the job until it ends")
    approve.set_defaults(func=cmd_approve)
    reject = decide.add_parser("reject", help="refuse the request, saying why")
    reject.add_argument("request")
    reject.add_argument("--reason", default="", help="shown to whoever lists the requests")
    reject.set_defaults(func=cmd_reject)


def _add_consolidate(sub: Any) -> None:
    parser = sub.add_parser(
        "consolidate",
        help="retrain from the initial weights without the ledger's data (in the background); "
        "the result replaces the FUSED chain",
    )
    parser.add_argument("--base", default="", help="the chain's top; default: the active version")
    parser.add_argument(
        "--rounds", type=int, default=0, help="0 = the rounds, config and seed of the training"
    )
    add_schedule_options(parser)
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_policy_options(parser)
    parser.set_defaults(func=cmd_consolidate)


def cmd_ledger(args: argparse.Namespace) -> int:
    """The forget ledger: every applied request, what later jobs leave out."""
    entries = coordinator(args).ledger()
    rows = [
        [
            e.entry_id,
            e.status.value,
            forgotten(e.forget),
            e.requested_by or "-",
            when(e.requested_at),
            e.job_id,
            e.version_id,
        ]
        for e in entries
    ]
    header = ["entry", "status", "forgets", "by", "requested", "job", "version"]
    emit(args, entries, lambda: table(header, rows))
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    found = coordinator(args).forget_requests()
    rows = [
        [
            r.request_id,
            r.status.value,
            forgotten(r.forget),
            when(r.requested_at),
            r.decided_by or "-",
            r.job_id or r.reason or "-",
        ]
        for r in found
    ]
    header = ["request", "status", "forget", "asked", "decided by", "job / reason"]
    emit(args, found, lambda: table(header, rows))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    client = coordinator(args)
    decided = client.approve(args.request)
    if args.wait:
        return start_job(args, client.job(decided.job_id))
    emit(args, decided, lambda: f"approved {decided.request_id}: started job {decided.job_id}")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    decided = coordinator(args).reject(args.request, args.reason)
    emit(args, decided, lambda: f"rejected {decided.request_id}")
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    done = coordinator(args).withdraw(args.entry, args.keep_version)
    entry = done.entry
    emit(
        args, done, lambda: f"withdrew {entry.entry_id} ({forgotten(entry.forget)}): {done.message}"
    )
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    spec = ConsolidationSpec(
        base_version=args.base,
        rounds=args.rounds,
        train=train_config(args),
        seed=args.seed,
        min_participants=args.min_participants,
        round_deadline_s=args.round_deadline,
        wait_for_participants_s=args.wait_participants,
        policy=policy_from_args(args),
    )
    return start_job(args, coordinator(args).consolidate(spec))
