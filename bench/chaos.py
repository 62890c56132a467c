"""`python -m bench.chaos`: fault scenarios and resource floods with real processes on loopback;
prints JSON.

Each scenario breaks something on purpose while a job runs, then checks what must still hold.
Faults (bench.chaos_faults): SIGKILL, SIGSTOP, a flipped byte on disk; quorum rounds complete,
nothing is counted twice, a restarted coordinator resumes to the bit-identical model,
corruption is refused. Floods (bench.chaos_floods): idle connections, slow and stalled upload
streams, an upload flood, too many streams; each gets its exact answer and the job completes.
Output: {"scenarios": [{"name", "passed", "detail"}]}; the exit status is 0 only if all pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.chaos_faults import (
    coordinator_killed_mid_stacked_unlearning,
    coordinator_killed_mid_training,
    coordinator_killed_mid_unlearning,
    coordinator_stopped_gracefully_mid_training,
    corrupted_artifact_refused,
    participant_killed_mid_round,
    quorum_lost_fails_clearly,
    silent_participant_marked_offline,
)
from bench.chaos_federation import PARTICIPANTS, Chaos, Failed, Outcome
from bench.chaos_floods import (
    concurrent_upload_streams,
    idle_connection_flood,
    slow_stream_upload,
    upload_quota_flood,
)
from bench.chaos_inputs import huge_id_log_flood_is_bounded, metadata_flood_charges_nothing
from bench.chaos_ledger import (
    coordinator_killed_mid_consolidation,
    coordinator_killed_mid_consolidation_audit,
    coordinator_killed_mid_withdrawal,
)

SCENARIOS: list[Callable[[Chaos], str]] = [
    participant_killed_mid_round,
    silent_participant_marked_offline,
    coordinator_killed_mid_training,
    coordinator_stopped_gracefully_mid_training,
    coordinator_killed_mid_unlearning,
    coordinator_killed_mid_stacked_unlearning,
    coordinator_killed_mid_withdrawal,
    coordinator_killed_mid_consolidation,
    coordinator_killed_mid_consolidation_audit,
    corrupted_artifact_refused,
    quorum_lost_fails_clearly,
    metadata_flood_charges_nothing,
    huge_id_log_flood_is_bounded,
    # The resource floods register participants of their own (loris, hoarder, streamer): last.
    slow_stream_upload,
    upload_quota_flood,
    concurrent_upload_streams,
    idle_connection_flood,
]

# Too heavy for `make test` (20,000 sockets, a minute of both cores): `python -m bench.chaos`
# runs them.
HEAVY: frozenset[Callable[[Chaos], str]] = frozenset({idle_connection_flood})


def run_scenarios(
    work: Path,
    names: set[str] | None = None,
    scenarios: list[Callable[[Chaos], str]] | None = None,
) -> list[Outcome]:
    chaos = Chaos(work)
    outcomes = []
    try:
        for scenario in SCENARIOS if scenarios is None else scenarios:
            name = scenario.__name__
            if names and name not in names:
                continue
            try:
                chaos.fed.wait_online(len(PARTICIPANTS))
                chaos.fed.withdraw_all()  # each scenario's requests apply to a clean ledger
                outcomes.append(Outcome(name, True, scenario(chaos)))
            except Exception as exc:  # a scenario's failure is its result, not a crash
                detail = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, Failed):
                    detail += "\n" + traceback.format_exc(limit=3)
                outcomes.append(Outcome(name, False, detail))
    finally:
        chaos.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--only", action="append", help="run just this scenario (repeatable)")
    parser.add_argument("--work-dir", type=Path, help="keep logs and state here")
    args = parser.parse_args(argv)
    known = {s.__name__ for s in SCENARIOS}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    with tempfile.TemporaryDirectory(prefix="fused-chaos-") as tmp:
        outcomes = run_scenarios(args.work_dir or Path(tmp), set(args.only or ()))
    report: dict[str, Any] = {"scenarios": [asdict(o) for o in outcomes]}
    print(json.dumps(report, indent=2))
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
