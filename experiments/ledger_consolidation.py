"""Consolidating a chain of three stacked unlearning requests, through the forget ledger.

    python -m experiments.ledger_consolidation [--seeds 0 1 2] [--quick] [--out results]

Per seed, exactly as `experiments.ledger_sequence` does (same partition, same budgets): train a
LeNet base on FashionMNIST by FedAvg with 10 participants, then stack R1 = participant p3,
R2 = class 5 and R3 = p0's backdoor samples (each adapter from the previous version). Then
`Coordinator.consolidate(ConsolidationSpec(min_participants=...))` retrains from the chain's
stored initial weights with the training job's own budget, on the data the ledger allows, and
the run waits for it. Recorded: the job's result (RA and each request's FA, chain against
consolidated, from its audit rounds), its bytes per retrain round, its seconds against the
chain's three unlearning jobs, and exactness: the consolidated version is served, its parent
is R3's version, every ledger entry is consolidated, the version forgets the three entries,
and reverting it serves R3 again with R3's SHA-256 (reapplying it, its own). Writes
results/ledger_consolidation.json (--quick: ledger_consolidation_quick.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.job_records import bytes_per_round
from experiments.ledger_sequence import (
    Setup,
    data_dir_used,
    fedavg_record,
    run_stack,
    seed_federation,
    train_base,
)
from experiments.ledger_sequence import parse as sequence_parse
from experiments.ledger_sequence_jobs import Produced, sha256_of
from experiments.ledger_sequence_summary import VERSIONS, stats
from experiments.seeds import git_commit
from fused.client import ConsolidationSpec, Coordinator, Job, JobEvent, JobStatus, LedgerStatus
from fused.common.domain.records import Phase
from fused.common.ml.models import default_model_for
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation

SHOWN = ("round_completed", "job_completed", "job_failed", "ledger_consolidated", "job_resumed")


def _show(event: JobEvent) -> None:
    if event.kind in SHOWN:
        print(f"  {event.kind} {event.phase} {event.round}: {event.message}", flush=True)


def _exported_sha256(coordinator: Coordinator, out: Path) -> tuple[str, str]:
    """(SHA-256 of the served version's exported file, the digest the client checked)."""
    exported = coordinator.export(out)
    return hashlib.sha256(out.read_bytes()).hexdigest(), exported.sha256


def _audits(job: Job) -> list[dict[str, Any]]:
    """The audit rounds: 1..n measure the chain on each request, n+1..2n the retrained model."""
    out = []
    for r in job.rounds:
        if r.phase == Phase.AUDIT and r.metrics.evaluation is not None:
            e = r.metrics.evaluation
            out.append({"round": r.round, "ra": e.accuracy, "fa": e.fa, "n": len(r.participants)})
    return sorted(out, key=lambda a: int(a["round"]))


def consolidate(
    fed: LocalFederation,
    coordinator: Coordinator,
    setup: Setup,
    chain: dict[str, Produced],
    work: Path,
) -> dict[str, Any]:
    """Start a consolidation of the stacked chain, wait for it, and check what it left."""
    r3 = chain["R3"]
    entry_of = {e.version_id: e.entry_id for e in coordinator.ledger()}
    entries = {name: entry_of.get(p.version_id, "") for name, p in chain.items()}
    served_before = coordinator.active_version()
    checks = {
        "R3_served_before": served_before is not None and served_before.version_id == r3.version_id,
    }
    spec = ConsolidationSpec(min_participants=setup.participants - 1)  # p3 takes no part
    print(f"consolidating {entries} from {r3.version_id}: {spec}", flush=True)
    events: list[JobEvent] = []

    def seen(event: JobEvent) -> None:
        events.append(event)
        _show(event)

    started = coordinator.consolidate(spec)
    done = coordinator.wait(started.job_id, on_event=seen)
    record = done.record
    figures: dict[str, Any] = {
        "job_id": done.job_id,
        "status": str(done.status),
        "reason": record.reason,
        "spec": {k: v for k, v in record.spec.items() if k != "policy"},
        "entries": entries,
    }
    if done.status is not JobStatus.COMPLETED:
        figures["events"] = [
            {"kind": e.kind, "phase": e.phase, "round": e.round, "message": e.message}
            for e in events
        ]
        print(f"consolidation {done.job_id} {done.status}: {record.reason}", flush=True)
        return {"consolidation": figures, "exactness": checks}
    result = done.result
    cid = str(result["version_id"])
    consolidated_sha = sha256_of(fed, cid)  # right after the job
    info = fed.control().GetJob(control_pb2.GetJobRequest(job_id=done.job_id), timeout=30)
    retrain = [r for r in done.rounds if r.phase == Phase.RETRAIN]
    figures.update(
        {
            "result": result,
            "version_id": cid,
            "sha256": consolidated_sha,
            "job_seconds": record.updated_at - record.created_at,
            "bytes_per_round": bytes_per_round(info, Phase.RETRAIN.value),
            "retrain_rounds": len(retrain),
            "retrain_participants": sorted({p for r in retrain for p in r.participants}),
            "audits": _audits(done),
        }
    )
    version = next(v for v in coordinator.versions() if v.version_id == cid)
    served = coordinator.active_version()
    ledger = coordinator.ledger()
    ids = sorted(entries.values())
    checks.update(
        {
            "result_served": result.get("served") is True,
            "consolidated_served": served is not None and served.version_id == cid,
            "parent_is_R3": version.record.parent_id == r3.version_id
            and result.get("base_version") == r3.version_id,
            "all_entries_consolidated": len(ledger) == len(chain)
            and all(e.status is LedgerStatus.CONSOLIDATED for e in ledger)
            and sorted(result.get("consolidated", [])) == ids,
            "forgets_are_the_entries": list(version.record.meta.forgets) == ids,
            "sha256_is_digest": consolidated_sha == version.record.digest,
        }
    )
    figures["forgets"] = list(version.record.meta.forgets)
    figures["ledger_after"] = [
        {"entry_id": e.entry_id, "status": str(e.status), "version_id": e.version_id}
        for e in ledger
    ]
    back = coordinator.revert(cid)  # serve the parent: the chain's top
    sha, checked = _exported_sha256(coordinator, work / "after-revert.safetensors")
    checks["revert_serves_R3_exactly"] = (
        back.version_id == r3.version_id and sha == r3.sha256 and checked == r3.sha256
    )
    forward = coordinator.reapply(cid)
    sha, checked = _exported_sha256(coordinator, work / "after-reapply.safetensors")
    checks["reapply_serves_consolidated_exactly"] = (
        forward.version_id == cid and sha == consolidated_sha and checked == consolidated_sha
    )
    return {"consolidation": figures, "exactness": checks}


def run_seed(setup: Setup, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    with seed_federation(setup, seed) as run:
        fed = run.fed
        base = train_base(fed, setup, seed)
        chain = run_stack(fed, setup, seed, base.version_id, run.requests)
        with Coordinator(fed.address, tls=fed.tls, token=fed.operator_token) as coordinator:
            print(f"[seed {seed}] consolidation", flush=True)
            measured = consolidate(fed, coordinator, setup, chain, run.shards.parent)
    return {
        "seed": seed,
        "fedavg": fedavg_record(base),
        "chain": {name: p.to_dict() for name, p in chain.items()},
        "chain_seconds": sum(p.seconds for p in chain.values()),
        **measured,
        "wall_seconds": time.monotonic() - started,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over the seeds whose consolidation completed."""
    runs = [r for r in seeds.values() if "result" in r["consolidation"]]
    res = [r["consolidation"]["result"] for r in runs]
    fa: dict[str, Any] = {}
    for i, name in enumerate(VERSIONS):
        fa[name] = {
            side: stats([x["requests"][i][f"fa_{side}"] for x in res])
            for side in ("chain", "consolidated")
        }
    unlearning_bpr = [sum(r["chain"][v]["bytes_per_round"] for v in VERSIONS) / 3 for r in runs]
    retrain_bpr = [r["consolidation"]["bytes_per_round"] for r in runs]
    checks = sorted({k for r in seeds.values() for k in r["exactness"]})
    return {
        "completed": f"{len(runs)}/{len(seeds)}",
        "ra": {
            "chain": stats([x["ra_chain"] for x in res]),
            "consolidated": stats([x["ra_consolidated"] for x in res]),
        },
        "fa": fa,
        "seconds": {
            "consolidation_job": stats([r["consolidation"]["job_seconds"] for r in runs]),
            "consolidation_result": stats([x["seconds"] for x in res]),
            "chain_unlearning_jobs": stats([r["chain_seconds"] for r in runs]),
            "consolidation_over_chain": stats(
                [_ratio(r["consolidation"]["job_seconds"], r["chain_seconds"]) for r in runs]
            ),
            "fedavg": stats([r["fedavg"]["seconds"] for r in runs]),
        },
        "bytes_per_round": {
            "retrain": stats(list(retrain_bpr)),
            "unlearning": stats(list(unlearning_bpr)),
            **{
                f"unlearning_{v}": stats([r["chain"][v]["bytes_per_round"] for r in runs])
                for v in VERSIONS
            },
            "retrain_over_unlearning": stats(
                [_ratio(a, b) for a, b in zip(retrain_bpr, unlearning_bpr, strict=True)]
            ),
            "fedavg": stats([r["fedavg"]["bytes_per_round"] for r in runs]),
        },
        "exactness": {
            k: f"{sum(bool(r['exactness'].get(k)) for r in seeds.values())}/{len(seeds)}"
            for k in checks
        },
    }


def _fmt(s: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean'] / scale:.{digits}f}±{s['std'] / scale:.{digits}f}"


def render(summary: dict[str, Any]) -> str:
    """Chain against consolidated, one row per figure (mean±std over seeds)."""
    sec, bpr = summary["seconds"], summary["bytes_per_round"]
    rows = [["figure", "chain (R1,R2,R3 stacked)", "consolidated", "consolidated/chain"]]
    rows.append(["RA", _fmt(summary["ra"]["chain"]), _fmt(summary["ra"]["consolidated"]), ""])
    labels = {"R1": "FA R1 (p3)", "R2": "FA R2 (class 5)", "R3": "FA R3 (backdoor ASR)"}
    for name in VERSIONS:
        f = summary["fa"][name]
        rows.append([labels[name], _fmt(f["chain"]), _fmt(f["consolidated"]), ""])
    rows.append(
        [
            "seconds",
            _fmt(sec["chain_unlearning_jobs"], 1, 1),
            _fmt(sec["consolidation_job"], 1, 1),
            _fmt(sec["consolidation_over_chain"], 1, 2),
        ]
    )
    rows.append(
        [
            "kB/round",
            _fmt(bpr["unlearning"], 1000, 1),
            _fmt(bpr["retrain"], 1000, 1),
            _fmt(bpr["retrain_over_unlearning"], 1, 2),
        ]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        f"completed {summary['completed']}; FedAvg base: {_fmt(sec['fedavg'], 1, 1)} s, "
        f"{_fmt(bpr['fedavg'], 1000, 1)} kB/round"
    )
    exact = ", ".join(f"{k} {v}" for k, v in summary["exactness"].items())
    lines.append(f"exactness (seeds passing): {exact}")
    return "\n".join(lines)


def run(setup: Setup) -> dict[str, Any]:
    started = time.monotonic()
    seeds = {str(seed): run_seed(setup, seed) for seed in setup.seeds}
    config = {
        **{
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(setup).items()
            if k not in ("work", "out", "data_dir", "name")
        },
        "data_dir": str(data_dir_used(setup)),
        "model": default_model_for(setup.dataset),
        "strategy": "stack (as experiments.ledger_sequence), then Coordinator.consolidate()",
        "consolidation": "ConsolidationSpec(min_participants=participants - 1), otherwise the "
        "defaults: the training job's rounds, train config and seed",
        "seconds": "created to last update of each job (the chain: its three unlearning jobs)",
        "unlearning_bytes_per_round": "mean of the three unlearning jobs' bytes per round",
        "commit": git_commit(),
    }
    return {
        "config": config,
        "seeds": seeds,
        "summary": summarize(seeds),
        "wall_seconds": time.monotonic() - started,
    }


def parse(argv: Sequence[str] | None) -> Setup:
    """The sequence's configuration (its defaults and --quick), in a work directory of its own."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget, seed 0, 4 participants")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--work", type=Path, default=None, help="default: runs/ledger-consolidation"
    )
    args = parser.parse_args(argv)
    forwarded = ["--out", str(args.out)] + (["--quick"] if args.quick else [])
    if args.seeds:
        forwarded += ["--seeds", *map(str, args.seeds)]
    if args.data_dir is not None:
        forwarded += ["--data-dir", str(args.data_dir)]
    name = "ledger_consolidation_quick" if args.quick else "ledger_consolidation"
    work = args.work or Path("runs") / name.replace("_", "-")
    return dataclasses.replace(sequence_parse(forwarded), work=work, name=name)


def main(argv: Sequence[str] | None = None) -> int:
    setup = parse(argv)
    results = run(setup)
    setup.out.mkdir(parents=True, exist_ok=True)
    path = setup.out / f"{setup.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(render(results["summary"]))
    print(f"wrote {path} in {results['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
