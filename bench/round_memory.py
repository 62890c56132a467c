"""Peak memory and time of one FedAvg round's aggregation on the coordinator: the earlier path
(every upload decoded and held until the round's end) against the streamed one (each upload
folded into an exact integer sum as it arrives, engine/round_sum.py).

    python -m bench.round_memory [--model resnet18] [--participants 100] [--threads 1]

The parent stores N uploads as a coordinator stores them (safetensors artifacts, content
addressed): the model's initial weights (seeded), each float tensor perturbed by
N(0, 0.01^2) noise of its own seed and BatchNorm's step counters advanced, with sample counts
between 400 and 600. Each variant then runs in a process of its own, so their RSS peaks are
separate (`ru_maxrss`), reading and decoding the uploads as `update_check` does:

- "held": what the engine did before: decode every upload and keep it, then the round's
  checks (update norms against the round's starting point, capped weights) and `fedavg` over
  all of them in participant order.
- "streamed": the engine's own code (`update_check` on a real JobContext with an in-memory
  store, `screen_updates`, `round_weights`, `RoundSum.finish`), with the uploads arriving in
  a shuffled order; "streamed_reversed" runs it again in the reverse order.

Both start from the same state (the model's weights loaded as the round's starting point).
Prints JSON: per variant the RSS before the round and at its peak (MiB), CPU seconds, wall
seconds in all and after the last upload arrived (what delays the round's commit: the held
path checks and averages everything there, the streamed one only finishes); the ratios;
whether both streamed orders gave the same bits; how far the streamed aggregate is from the
held one (largest absolute and relative difference, differing elements).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.records import JobEvent, JobKind, JobStatus, Phase
from fused.common.domain.tasks import TaskOutcome, TrainOutcome
from fused.common.ml.fedavg import fedavg
from fused.common.ml.models import init_model
from fused.common.ml.plausibility import capped_weights, norm_refusals, update_norm
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.engine.context import JobContext, RoundBytes
from fused.coordinator.engine.fedavg_loop import update_check
from fused.coordinator.engine.round_sum import Contribution, Received, round_sum
from fused.coordinator.engine.rounds import RoundResult
from fused.coordinator.engine.screening import round_weights, screen_updates
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.fleet import Accepted, Fleet, ResultCheck
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import InMemoryStateStore, JobRecord, ParticipantRecord

Tensors = dict[str, torch.Tensor]
COUNTS = (400, 600)  # each participant's samples: no weight reaches the 0.5 cap
NOISE = 0.01


def _perturbed(start: Tensors, seed: int) -> Tensors:
    gen = torch.Generator().manual_seed(seed)
    out: Tensors = {}
    for name, t in start.items():
        if t.is_floating_point():
            out[name] = t + torch.randn(t.shape, generator=gen, dtype=t.dtype) * NOISE
        else:
            out[name] = t + int(torch.randint(1, 100, (), generator=gen))
    return out


def prepare(work: Path, model: str, participants: int) -> dict[str, Any]:
    """The round's starting point and N uploads in an artifact store under `work`."""

    start = {k: v.detach().clone() for k, v in init_model(model, 10, 0).state_dict().items()}
    store = ArtifactStore(work / "artifacts")
    start_blob = store.put_bytes(encode_tensors(start, {"model": model}))
    rng = random.Random(0)
    uploads = []
    for i in range(participants):
        blob = store.put_bytes(encode_tensors(_perturbed(start, 1000 + i)))
        uploads.append({"participant": f"p{i:03d}", "blob": blob, "n": rng.randint(*COUNTS)})
    params = sum(t.numel() for t in start.values())
    size = sum(t.numel() * t.element_size() for t in start.values())
    plan = {"model": model, "start": start_blob, "uploads": uploads}
    (work / "plan.json").write_text(json.dumps(plan))
    return {"parameters": params, "upload_mib": round(size / 2**20, 1)}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    """This process's CPU seconds: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _held(work: Path, plan: dict[str, Any]) -> tuple[Tensors, float]:
    """The earlier engine: decode and keep every upload, then check and average them all."""

    store, policy = ArtifactStore(work / "artifacts"), AggregationPolicy()
    start = decode_tensors(store.get_bytes(plan["start"]))[0]
    schema = {k: (v.dtype, v.shape) for k, v in start.items()}
    held = {}
    for u in plan["uploads"]:  # as the old update_check returned them
        tensors = decode_tensors(store.get_bytes(u["blob"]))[0]
        assert {k: (v.dtype, v.shape) for k, v in tensors.items()} == schema
        held[u["participant"]] = (tensors, u["n"])
    last_arrival = time.perf_counter()
    norms = {pid: update_norm(t, start) for pid, (t, _) in sorted(held.items())}
    for pid in norm_refusals(norms, policy.norm_factor, policy.max_norm):
        del held[pid]
    pids = sorted(held)
    weights = capped_weights([held[p][1] for p in pids], policy.max_weight_share)
    out = fedavg([(held[p][0], w) for p, w in zip(pids, weights, strict=True)])
    return out, last_arrival


def _context(work: Path, plan: dict[str, Any]) -> JobContext:
    """A job's context as the engine gets it: in-memory store, real fleet, artifact store."""

    store = InMemoryStateStore()
    store.create_job(JobRecord("job", JobKind.TRAIN, {}, JobStatus.RUNNING, "", 0, "", 0, 0))
    fleet = Fleet(store, offline_after_s=3600)
    now = time.time()
    for u in plan["uploads"]:
        fleet.register(ParticipantRecord(u["participant"], [COUNTS[1]], COUNTS[1], 1, now, now))
        fleet.record_upload(u["participant"], u["blob"])

    def emit(kind: str, phase: str, r: int, message: str, data: Any = None) -> JobEvent:
        return store.append_event("job", kind, phase, r, message, data or {}, 0.0)

    artifacts = ArtifactStore(work / "artifacts")
    metrics = CoordinatorMetrics(CollectorRegistry())
    return JobContext("job", store, artifacts, fleet, metrics, emit, lambda p, r: RoundBytes())


def _streamed(work: Path, plan: dict[str, Any], order: str) -> tuple[Tensors, float]:
    """The engine's code: each upload checked, decoded, measured and folded as it arrives."""

    ctx = _context(work, plan)
    start = decode_tensors(ctx.artifacts.get_bytes(plan["start"]))[0]
    payload = WeightsPayload(plan["model"], start)
    arrivals = list(plan["uploads"])
    random.Random(1).shuffle(arrivals)
    if order == "reversed":
        arrivals.reverse()
    into = round_sum(ctx.policy, lambda b: payload.decode(ctx.artifacts.get_bytes(b)))
    result: RoundResult[Received] = RoundResult()

    async def arrive(check: ResultCheck[Received]) -> None:  # one at a time, as PushResult
        for u in arrivals:
            train = TrainOutcome(u["blob"], u["n"], 0.1, 1.0)
            outcome = TaskOutcome(u["participant"], "t", train)
            result.accepted[u["participant"]] = Accepted(outcome, await check(outcome))

    asyncio.run(arrive(update_check(ctx, payload, into, start)))
    del start
    last_arrival = time.perf_counter()
    screen_updates(ctx, result, Phase.TRAIN, 1)
    weights = round_weights(ctx, result, Phase.TRAIN, 1)
    final = [
        Contribution(a.outcome.participant_id, a.payload.blob_id, w)
        for a, w in zip(result.in_order(), weights, strict=True)
    ]
    return into.finish(final), last_arrival


def child(work: Path, variant: str, threads: int) -> dict[str, Any]:
    """One variant in this process: its RSS before and at the peak, seconds; the aggregate
    is written to `work` for the parent to compare."""
    torch.set_num_threads(threads)
    plan = json.loads((work / "plan.json").read_text())
    before, cpu = _rss_mib(), _cpu_s()
    started = time.perf_counter()
    if variant == "held":
        out, last_arrival = _held(work, plan)
    else:
        order = "reversed" if variant.endswith("reversed") else "shuffled"
        out, last_arrival = _streamed(work, plan, order)
    ended, cpu = time.perf_counter(), _cpu_s() - cpu
    peak = _rss_mib()
    (work / f"{variant}.safetensors").write_bytes(encode_tensors(out))
    return {
        "rss_before_mib": round(before),
        "peak_rss_mib": round(peak),
        "seconds": round(ended - started, 2),
        "seconds_after_last_arrival": round(ended - last_arrival, 2),
        "cpu_seconds": round(cpu, 2),
    }


def _run_child(work: Path, variant: str, threads: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.round_memory", "--child", variant, "--work", str(work)]
    done = subprocess.run([*argv, "--threads", str(threads)], capture_output=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def compare(work: Path, a: str, b: str) -> dict[str, Any]:
    """How far aggregate `b` is from `a`: identical bits, largest differences, elements off."""
    x = decode_tensors((work / f"{a}.safetensors").read_bytes())[0]
    y = decode_tensors((work / f"{b}.safetensors").read_bytes())[0]
    differing, worst_abs, worst_rel = 0, 0.0, 0.0
    for name in x:
        d = (x[name].to(torch.float64) - y[name].to(torch.float64)).abs()
        differing += int((x[name] != y[name]).sum())
        worst_abs = max(worst_abs, float(d.max()))
        scale = x[name].to(torch.float64).abs().clamp_min(1e-30)
        worst_rel = max(worst_rel, float((d / scale).max()))
    total = sum(t.numel() for t in x.values())
    return {
        "identical": differing == 0,
        "differing_elements": differing,
        "elements": total,
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--child", choices=("held", "streamed", "streamed_reversed"))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.work, args.child, args.threads)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="round-memory-"))
    try:
        report: dict[str, Any] = {"model": args.model, "participants": args.participants}
        report.update(prepare(work, args.model, args.participants))
        report["threads"] = args.threads
        for variant in ("held", "streamed", "streamed_reversed"):
            report[variant] = _run_child(work, variant, args.threads)
        held, streamed = report["held"], report["streamed"]
        report["peak_rss_ratio_held_over_streamed"] = round(
            held["peak_rss_mib"] / streamed["peak_rss_mib"], 2
        )
        for key in ("seconds", "seconds_after_last_arrival", "cpu_seconds"):
            ratio = streamed[key] / max(held[key], 0.01)
            report[f"{key}_ratio_streamed_over_held"] = round(ratio, 2)
        report["orders_identical"] = compare(work, "streamed", "streamed_reversed")["identical"]
        report["streamed_vs_held"] = compare(work, "held", "streamed")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
