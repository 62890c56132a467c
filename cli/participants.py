"""`fusedctl participants remove|block|unblock ID`: an operator's say over participants (the
bare `fusedctl participants` lists them, in listings)."""

from __future__ import annotations

import argparse

from fused.cli.client import as_dict, control_stub, emit
from fused.proto.v1 import control_pb2


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
    request = control_pb2.ParticipantRequest(participant_id=args.participant)
    info = control_stub(args).RemoveParticipant(request, timeout=30)
    emit(args, as_dict(info), lambda: f"removed participant {info.participant_id}")
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    request = control_pb2.BlockParticipantRequest(
        participant_id=args.participant, reason=args.reason
    )
    info = control_stub(args).BlockParticipant(request, timeout=30)
    emit(args, as_dict(info), lambda: f"blocked participant {info.participant_id}")
    return 0


def cmd_unblock(args: argparse.Namespace) -> int:
    request = control_pb2.ParticipantRequest(participant_id=args.participant)
    info = control_stub(args).UnblockParticipant(request, timeout=30)
    emit(args, as_dict(info), lambda: f"unblocked participant {info.participant_id}")
    return 0
