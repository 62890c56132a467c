"""`fusedctl certs init`: a development CA, certificates and bearer tokens for a federation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fused.cli.pki import init_pki


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    certs = subparsers.add_parser("certs", help="development PKI and bearer tokens")
    sub = certs.add_subparsers(dest="certs_command", required=True)
    init = sub.add_parser(
        "init",
        help="make a CA, coordinator and client certificates, and tokens",
        description="Not for production: keys are unencrypted and the CA key stays on disk.",
    )
    init.add_argument("--out", type=Path, required=True, help="directory")
    init.add_argument("--participants", type=_names, required=True, help="ids, comma-separated")
    init.add_argument("--operators", type=_names, default=["admin"], help="names, comma-separated")
    init.add_argument(
        "--hosts",
        type=_names,
        default=["localhost", "127.0.0.1", "::1"],
        help="the coordinator's DNS names and IP addresses, comma-separated",
    )
    init.add_argument("--days", type=int, default=365, help="validity of every certificate")
    init.add_argument("--force", action="store_true", help="replace an existing PKI in --out")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    try:
        written = init_pki(
            args.out, args.participants, args.operators, args.hosts, args.days, args.force
        )
    except (ValueError, OSError) as exc:
        print(f"fusedctl: certs init: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(_hint(args.participants, args.operators))
    return 0


def _hint(participants: list[str], operators: list[str]) -> str:
    # File names only: the token files' contents never reach the terminal.
    pid = participants[0] if participants else "ID"
    op = operators[0] if operators else "admin"
    return "\n".join(
        [
            "",
            "Use them (paths relative to --out):",
            "  fused-coordinator --tls-cert coordinator.pem --tls-key coordinator.key "
            "--tls-ca ca.pem --auth-file auth.toml",
            f"  fused-participant --tls-ca ca.pem --tls-cert participant-{pid}.pem "
            f"--tls-key participant-{pid}.key",
            f"    (or, instead of --tls-cert/--tls-key: --token-file participant-{pid}.token)",
            f"  fusedctl --tls-ca ca.pem --tls-cert operator-{op}.pem --tls-key operator-{op}.key",
            f"    (or, instead of --tls-cert/--tls-key: --token-file operator-{op}.token)",
        ]
    )
