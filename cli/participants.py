"""`fusedctl participants remove|block|unblock ID`: an operator's say over participants (the
bare `fusedctl participants` lists them, in listings)."""

from __future__ import annotations

import argparse

from fused.cli.client import coordinator, emit


def add_participant_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="participants_command", metavar="{remove,block,unblock}")
    remove = sub.add_parser(
        "remove",
        help="forget a participant's record (refused while it holds an open task); a running "
        "agent registers again: block it to keep it out",
    )
    remove.add_argument("participant")
    remove.set_defaults(func=cmd_remove)
    block = sub.add_parser(
        "block",
        help="refuse a participant: its calls answer PERMISSION_DENIED, its open tasks fail, "
        "no job selects it (until unblocked)",
    )
    block.add_argument("participant")
    block.add_argument("--reason", default="", help="shown by `fusedctl participants`")
    block.set_defaults(func=cmd_block)
    unblock = sub.add_parser("unblock", help="lift a block; the agent registers again")
    unblock.add_argument("participant")
    unblock.set_defaults(func=cmd_unblock)


def cmd_remove(args: argparse.Namespace) -> int:
    removed = coordinator(args).remove_participant(args.participant)
    emit(args, removed, lambda: f"removed participant {removed.participant_id}")
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    blocked = coordinator(args).block_participant(args.participant, args.reason)
    emit(args, blocked, lambda: f"blocked participant {blocked.participant_id}")
    return 0


def cmd_unblock(args: argparse.Namespace) -> int:
    unblocked = coordinator(args).unblock_participant(args.participant)
    emit(args, unblocked, lambda: f"unblocked participant {unblocked.participant_id}")
    return 0
