"""fusedctl's global flags work before and after the command, and a value given before the
command is not reset by the command's own parser."""

from __future__ import annotations

import pytest

from fused.cli.main import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "models"],
        ["models", "--json"],
        ["ledger", "withdraw", "f-1", "--json"],
        ["participants", "block", "p1", "--json", "--reason", "x"],
        ["consolidate", "--json", "--rounds", "3"],
    ],
)
def test_json_anywhere(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).json is True


def test_a_flag_before_the_command_is_kept() -> None:
    args = build_parser().parse_args(["--coordinator", "10.0.0.1:9", "--json", "jobs"])
    assert (args.coordinator, args.json) == ("10.0.0.1:9", True)
    after = build_parser().parse_args(["jobs", "--coordinator", "10.0.0.2:9"])
    assert (after.coordinator, after.json) == ("10.0.0.2:9", False)


def test_credentials_after_the_command() -> None:
    args = build_parser().parse_args(["models", "--token-file", "/t", "--tls-ca", "/ca"])
    assert (str(args.token_file), str(args.tls_ca), args.tls_cert) == ("/t", "/ca", None)
