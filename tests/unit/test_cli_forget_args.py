"""`fusedctl unlearn` / `evaluate` forget options become the ForgetSpec they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fused.cli.client import CliError
from fused.cli.commands import forget_from_args
from fused.cli.main import build_parser
from fused.common.domain.tasks import ForgetSpec

CASES = [
    (["--participant", "p3"], ForgetSpec("participant", participant_id="p3")),
    (["--class", "4"], ForgetSpec("class", class_label=4)),
    (["--class", "4", "--relabel"], ForgetSpec("class", class_label=4, relabel=True)),
    (
        ["--samples", "p1:{ids}", "--trigger-size", "2", "--trigger-target", "7"],
        ForgetSpec("samples", "p1", sample_ids=(3, 5, 9), trigger_size=2, trigger_target=7),
    ),
    (
        ["--samples", "p1:{ids}", "--relabel"],
        ForgetSpec("samples", "p1", sample_ids=(3, 5, 9), relabel=True),
    ),
]


@pytest.mark.parametrize(
    ("flags", "want"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else ""
)
def test_forget_flags(flags: list[str], want: ForgetSpec, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("9\n3\n5\n3\n")
    argv = ["unlearn", *(f.format(ids=ids) for f in flags)]
    assert forget_from_args(build_parser().parse_args(argv)) == want


def test_samples_without_a_holder_is_refused() -> None:
    args = build_parser().parse_args(["unlearn", "--samples", "ids.txt"])
    with pytest.raises(CliError, match="PARTICIPANT:FILE"):
        forget_from_args(args)
