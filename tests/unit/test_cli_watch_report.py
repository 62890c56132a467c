"""`fusedctl watch` rendering and `fusedctl report` output, from events and records shaped as
the coordinator makes them (engine.rounds.finish_round, JobManager.emit)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fused.cli.report import (
    accuracy_series,
    bytes_series,
    markdown,
    pyplot,
    write_report,
)
from fused.cli.watch import LiveView, bar, event_line, phase_plan, render
from fused.common.domain.records import JobEvent, JobKind, Phase
from fused.common.domain.round_metrics import RoundMetrics
from fused.coordinator.state import JobRecord, JobStatus, RoundRecord

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNLEARN_SPEC = {"method": "fused", "rounds": 3, "evaluate_each_round": True}


def wire(up: dict[str, int], down: dict[str, int]) -> dict[str, Any]:
    return {"up": up, "down": down, "total": sum(up.values()) + sum(down.values())}


def ev(
    seq: int, kind: str, phase: str = "", r: int = 0, msg: str = "", data: Any = None
) -> JobEvent:
    return JobEvent(
        job_id="job-1",
        seq=seq,
        time=1.7e9 + seq,
        kind=kind,
        phase=phase,
        round=r,
        message=msg,
        data=json.loads(json.dumps(data or {})),
    )


def unlearn_events() -> list[JobEvent]:
    """A FUSED job in adapter round 2; p2 missed adapter round 1's deadline."""
    three = {"p0": 100, "p1": 100, "p2": 100}
    return [
        ev(1, "job_started", msg="unlearn job started"),
        ev(
            2,
            "round_completed",
            "evaluate",
            0,
            "evaluate round 0 done",
            {
                "accuracy": 0.9,
                "fa": 0.95,
                "per_participant": {"p0": 0.9, "p1": 0.9, "p2": 0.9},
                "failures": {},
                "seconds": 0.5,
                "bytes": wire(three, {"p0": 2048, "p1": 2048, "p2": 2048}),
            },
        ),
        ev(
            3,
            "round_completed",
            "sensitivity",
            1,
            "sensitivity round 1 done",
            {
                "ranking": [],
                "failures": {},
                "seconds": 1.0,
                "bytes": wire({"p0": 500, "p1": 500, "p2": 500}, {"p0": 0, "p1": 0, "p2": 0}),
            },
        ),
        ev(4, "round_started", "adapter", 1, "adapter round 1: 3 participants"),
        ev(
            5,
            "round_completed",
            "adapter",
            1,
            "adapter round 1 done",
            {
                "train_loss": 0.5,
                "failures": {"p2": "no result within 5 s"},
                "seconds": 5.25,
                "bytes": wire({"p0": 4096, "p1": 4096, "p2": 0}, {"p0": 10, "p1": 10, "p2": 10}),
            },
        ),
        ev(
            6,
            "round_completed",
            "evaluate",
            1,
            "evaluate round 1 done",
            {
                "accuracy": 0.88,
                "fa": 0.2,
                "per_participant": {"p0": 0.9, "p1": 0.8},
                "failures": {"p2": "task closed"},
                "seconds": 0.5,
                "bytes": wire({"p0": 100, "p1": 100}, {"p0": 1024, "p1": 1024}),
            },
        ),
        ev(7, "round_started", "adapter", 2, "adapter round 2: 2 participants"),
    ]


def test_phase_plan_follows_the_spec() -> None:
    assert phase_plan("train", {"rounds": 4, "evaluate_each_round": True}) == [
        ("train", 4),
        ("evaluate", 4),
    ]
    assert phase_plan("train", {"rounds": 4, "evaluate_each_round": False}) == [
        ("train", 4),
        ("evaluate", 1),
    ]
    assert phase_plan("unlearn", UNLEARN_SPEC) == [
        ("sensitivity", 1),
        ("adapter", 3),
        ("evaluate", 4),  # round 0 measures the base model first
    ]
    assert phase_plan("unlearn", {"method": "retrain", "rounds": 2}) == [
        ("retrain", 2),
        ("evaluate", 3),
    ]
    assert phase_plan("evaluate", {"version_id": "m-1"}) == [("evaluate", 1)]


def test_render_mid_job() -> None:
    assert render("job-1", "unlearn", UNLEARN_SPEC, unlearn_events()) == [
        "job job-1  unlearn (fused)  running",
        "  sensitivity  [########################]  1/1  1.5 KiB",
        "  adapter      [########----------------]  1/3  8.0 KiB",
        "  evaluate     [############------------]  2/4  8.5 KiB",
        "  now      adapter round 2: 2 participants selected; "
        "who reported is known when the round ends",
        "  last     evaluate round 1: 2 reported (p0, p1), 1 failed (p2); 2.2 KiB in 0.50 s",
        "  moved    18.0 KiB (up 10.0 KiB, down 8.0 KiB; counted at each round's end)",
        "  metrics  RA 0.8800  FA 0.2000  loss 0.5000",
        "  · round_completed adapter round 1 done",
        "  · round_completed evaluate round 1 done",
        "  · round_started adapter round 2: 2 participants",
    ]


def test_render_after_the_job_ends_takes_the_final_result() -> None:
    done = ev(
        8,
        "job_completed",
        "evaluate",
        3,
        "fused: RA 0.9000 -> 0.8700, FA 0.9500 -> 0.1000",
        {"ra_after": 0.87, "fa_after": 0.1, "ra_before": 0.9},
    )
    lines = render("job-1", "unlearn", UNLEARN_SPEC, [*unlearn_events(), done], recent=0)
    assert lines[0] == "job job-1  unlearn (fused)  completed"
    assert not any(line.startswith("  now") for line in lines)
    assert "  metrics  RA 0.8700  FA 0.1000  loss 0.5000" in lines
    assert lines[-1] == "  result   completed: fused: RA 0.9000 -> 0.8700, FA 0.9500 -> 0.1000"


def test_render_reporters_from_bytes_when_the_round_names_none() -> None:
    """A training round's data has no per-participant results: those who sent bytes and did
    not fail reported."""
    events = [
        ev(1, "round_started", "train", 1, "round 1: 3 participants"),
        ev(
            2,
            "round_completed",
            "train",
            1,
            "train round 1 done",
            {
                "train_loss": 1.25,
                "failures": {"p1": "ValueError: bad"},
                "seconds": 2.0,
                "bytes": wire({"p0": 10, "p1": 10, "p2": 10}, {"p0": 5, "p1": 5, "p2": 5}),
            },
        ),
    ]
    lines = render("job-2", "train", {"rounds": 2}, events, recent=0)
    assert "  train     [############------------]  1/2  45 B" in lines
    assert "  evaluate  [------------------------]  0/2" in lines
    assert "  last     train round 1: 2 reported (p0, p2), 1 failed (p1); 45 B in 2.00 s" in lines
    assert "  metrics  loss 1.2500" in lines


def test_render_before_any_event_and_unknown_phases() -> None:
    assert render("job-3", "train", {"rounds": 1}, [], recent=0) == [
        "job job-3  train  pending",
        "  train     [------------------------]  0/1",
        "  evaluate  [------------------------]  0/1",
        "  moved    0 B (up 0 B, down 0 B; counted at each round's end)",
        "  metrics  none yet",
    ]
    odd = [ev(1, "round_completed", "extra", 1, "extra round 1 done", {})]
    assert "  extra  [########################]  1/?" in render("job-4", "?", {}, odd)


def test_bar_fills_in_proportion() -> None:
    assert bar(0, 4, 8) == "[--------]"
    assert bar(1, 4, 8) == "[##------]"
    assert bar(4, 4, 8) == "[########]"
    assert bar(5, 4, 8) == "[########]"


def test_live_view_redraws_in_place_and_clips() -> None:
    out = io.StringIO()
    view = LiveView(out, columns=30)
    view.draw(["first", "x" * 50])
    assert out.getvalue() == "\x1b[J" + "first\n" + "x" * 29 + "\n"
    out.seek(0)
    out.truncate()
    view.draw(["a", "b", "c"])
    assert out.getvalue() == "\x1b[2A\r\x1b[J" + "a\nb\nc\n"  # up over the 2 lines drawn


def test_event_line_shows_metrics_and_bytes() -> None:
    line = event_line(unlearn_events()[5])
    assert "round_completed  evaluate 1" in line
    assert line.endswith("evaluate round 1 done (RA 0.8800, FA 0.2000, 2.2 KiB on the wire)")


def rounds_of_an_unlearning_job() -> list[RoundRecord]:
    def rec(phase: str, r: int, metrics: dict[str, Any], pids: list[str]) -> RoundRecord:
        stored = RoundMetrics.from_dict(metrics)
        return RoundRecord("job-1", Phase(phase), r, 100.0 + r, 101.0 + r, pids, stored)

    all3 = ["p0", "p1", "p2"]
    return [
        rec(
            "evaluate",
            0,
            {"accuracy": 0.9, "fa": 0.95, "seconds": 0.5, "bytes": wire({"p0": 7}, {"p0": 70})},
            all3,
        ),
        rec("sensitivity", 1, {"ranking": [], "bytes": wire({"p0": 11}, {"p0": 0})}, all3),
        rec(
            "adapter",
            1,
            {
                "train_loss": 0.5,
                "values": "ab" * 32,
                "failures": {"p2": "no result | in time"},
                "bytes": wire({"p0": 4096, "p1": 4096}, {"p0": 12, "p1": 12}),
            },
            ["p0", "p1"],
        ),
        rec(
            "evaluate",
            1,
            {"accuracy": 0.87, "fa": 0.1, "bytes": wire({"p0": 8}, {"p0": 1024})},
            ["p0", "p1"],
        ),
    ]


def unlearning_job() -> JobRecord:
    return JobRecord(
        job_id="job-1",
        kind=JobKind.UNLEARN,
        spec=dict(UNLEARN_SPEC),
        status=JobStatus.COMPLETED,
        phase="evaluate",
        round=1,
        reason="fused: RA 0.9000 -> 0.8700, FA 0.9500 -> 0.1000",
        created_at=100.0,
        updated_at=112.5,
        result={
            "version_id": "m-new",
            "base_version": "m-base",
            "method": "fused",
            "ra_before": 0.9,
            "ra_after": 0.87,
            "fa_before": 0.95,
            "fa_after": 0.1,
            "critical_layers": ["fc.weight"],
        },
    )


def test_report_series() -> None:
    rounds = rounds_of_an_unlearning_job()
    assert [(p.round, p.ra, p.fa) for p in accuracy_series(rounds)] == [
        (0, 0.9, 0.95),
        (1, 0.87, 0.1),
    ]
    series = bytes_series(rounds)
    assert list(series) == ["evaluate", "sensitivity", "adapter"]
    assert [(b.round, b.up, b.down) for b in series["adapter"]] == [(1, 8192, 24)]


def test_report_markdown() -> None:
    text = markdown(unlearning_job(), rounds_of_an_unlearning_job(), ["accuracy.png"])
    assert text.startswith("# Job job-1\n")
    assert "| status | completed |" in text
    assert "| wall time | 12.5 s |" in text
    assert "- RA before → after: 0.9000 → 0.8700" in text
    assert "- FA before → after: 0.9500 → 0.1000" in text
    assert "- new model version: `m-new`" in text and "`fc.weight`" in text
    assert "![Accuracy per round](accuracy.png)" in text and "bytes.png" not in text
    assert "| evaluate | 0 | p0 p1 p2 | 0.9000 | 0.9500 | - | 7 | 70 | 0.50 | - |" in text
    # A pipe in a failure reason must not break the table.
    piped = (
        "| adapter | 1 | p0 p1 | - | - | 0.5000 | 8192 | 24 | 0.00 | p2: no result \\| in time |"
    )
    assert piped in text
    assert '"method": "fused"' in text


def test_write_report_draws_real_pngs(tmp_path: Path) -> None:
    written = write_report(
        pyplot(), unlearning_job(), rounds_of_an_unlearning_job(), tmp_path / "out"
    )
    assert [p.name for p in written] == ["report.md", "accuracy.png", "bytes.png"]
    for png in written[1:]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert "![Bytes per round per phase](bytes.png)" in written[0].read_text()


def test_report_of_a_job_without_rounds_has_no_plots(tmp_path: Path) -> None:
    job = unlearning_job()
    job.status, job.result, job.reason = JobStatus.FAILED, {}, "only 0 of 1 participants online"
    written = write_report(pyplot(), job, [], tmp_path)
    assert written == [tmp_path / "report.md"]
    text = written[0].read_text()
    assert "No rounds recorded." in text and "No result (the job did not complete)." in text


def test_report_without_matplotlib_says_how_to_install(tmp_path: Path) -> None:
    """A real fusedctl process where `import matplotlib` fails: a clear error, before any
    network call (nothing listens on the coordinator address given)."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)])}
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", "127.0.0.1:9"]
    done = subprocess.run(
        [*cmd, "report", "job-1", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("fusedctl: `fusedctl report` draws its plots with matplotlib")
    assert "pip install matplotlib" in done.stderr and not (tmp_path / "r").exists()
