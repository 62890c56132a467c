"""Load benchmark: N simulated participants against one coordinator on loopback.

    python -m bench.load [--participants 1000] [--rounds 2] [--load-processes P]
                         [--json-out PATH]

Starts `python -m fused.coordinator.main` as a subprocess (RLIMIT_NOFILE raised to the hard limit
first, and inherited; connection and concurrent-call limits raised to hold N participants), then
drives N participants from P spawned load processes (bench.load_workers; default one per 2,500)
with grpc.aio, each over its own channel and TCP connection ("connections" counts them in
/proc/net/tcp). Each one speaks participant protocol 2 as participant/agent.py does
(bench.load_participant): Register, a PullTask long poll, then per task: its model inline in
the task reply, simulated work with heartbeats, and one PushResult that carries the update
inline and brings back the next task (DownloadBlob/UploadBlob only for artifacts above the
coordinator's inline_max_bytes). A training job is started through the ControlService and
followed until it ends. Unless --no-auth, every participant has its own bearer token (the
coordinator gets an auth file of their hashes), so every call goes through real
authentication.

The simulated participants never import torch (checked in every process): the update is made
with numpy and safetensors.numpy, in the safetensors layout the coordinator's strict decoder
(common/codecs/tensor_codec.py) accepts.

Prints one JSON object: call counts (also per participant per round), errors (any non-OK
status, plus results the coordinator did not accept), p50/p99 latencies per call type, the
coordinator's peak RSS, CPU time and open files, and the load average around the run.
pull_task and push_result_wait are long polls (they include the wait for a task); push_result
is the same call timed to the coordinator's response headers, sent when it has accepted the
result; "overall" leaves the long polls out. Exit status 0 only if the job completed with zero
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load_assets import make_assets
from bench.load_job import LoadConfig, capacity_args, log, make_credentials, run_job
from bench.load_participant import Settings
from bench.load_process import (
    established_to,
    exit_on_sigterm,
    open_fds,
    process_usage,
    raise_nofile_limit,
    start_coordinator,
    stop_coordinator,
    tail,
)
from bench.load_stats import MAX_ERROR_SAMPLES, Stats
from bench.load_workers import (
    PARTICIPANTS_PER_PROCESS,
    LoadProcesses,
    WorkerReport,
    default_processes,
    slices,
)

# --------------------------------------------------------------------------- the run


async def sample(pid: int, workers: LoadProcesses, peak: dict[str, float]) -> None:
    """Track the coordinator's peak open file descriptors and the machine's peak load
    average; log progress every 10 s."""
    last_log = time.monotonic()
    while True:
        peak["coordinator_peak_fds"] = max(peak.get("coordinator_peak_fds", 0), open_fds(pid))
        peak["loadavg_1m_peak"] = max(peak.get("loadavg_1m_peak", 0.0), os.getloadavg()[0])
        if time.monotonic() - last_log >= 10.0:
            last_log = time.monotonic()
            calls, failed = workers.calls()
            log(f"{calls} calls, {failed} failed; fds {open_fds(pid)}; load {loadavg()}")
        await asyncio.sleep(0.1)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def wait_registered(workers: LoadProcesses, needed: int, timeout_s: float) -> None:
    """Until every participant registered; fails early when all calls are refused or a load
    process died."""
    deadline = time.monotonic() + timeout_s
    while (done := workers.registered()) < needed:
        calls, failed = workers.calls()
        if workers.dead() or (done == 0 and failed >= needed) or time.monotonic() > deadline:
            raise RuntimeError(
                f"{done} of {needed} participants registered ({failed} of {calls} calls "
                f"failed); {workers.dead() or 'load processes alive'}"
            )
        await asyncio.sleep(0.1)


async def drive(config: LoadConfig, port: int, coordinator_pid: int) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    summary, initial_weights = make_assets()
    settings = Settings(
        target,
        config.work_s,
        summary,
        register_timeout_s=config.register_timeout_s,
        register_spread_s=config.register_spread_s,
    )
    processes = config.processes or default_processes(config.participants)
    workers = LoadProcesses(slices(config.participants, processes, settings, config.tokens))
    out: dict[str, Any] = {"load_processes": len(workers), "loadavg_at_start": loadavg()}
    started, wall_started = time.monotonic(), time.time()
    workers.start()
    peak: dict[str, float] = {}
    sampler = asyncio.create_task(sample(coordinator_pid, workers, peak))
    try:
        await wait_registered(workers, config.participants, config.wait_for_participants_s)
        out["register_all_seconds"] = round(time.monotonic() - started, 2)
        out["connections"] = established_to(port)  # before the control channel opens
        out["coordinator_open_fds"] = open_fds(coordinator_pid)
        log(
            f"{config.participants} registered in {out['register_all_seconds']} s "
            f"over {out['connections']} connections"
        )
        info = await run_job(config, target, initial_weights, out)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        reports = await workers.stop()
    out["wall_seconds"] = round(time.monotonic() - started, 2)
    out["loadavg_at_end"] = loadavg()
    out.update(peak)
    out["job_id"] = info.job_id
    out["job_status"] = info.status
    out["job_reason"] = info.reason
    out["round_seconds"] = [
        {"phase": r.phase, "round": r.round, "seconds": round(r.finished_at - r.started_at, 2)}
        for r in info.rounds
    ]
    out.update(merge_reports(reports, config, wall_started))
    out["round_windows_s"] = [  # each round's start and end, in seconds of the run
        [
            r.phase,
            r.round,
            round(r.started_at - wall_started, 1),
            round(r.finished_at - wall_started, 1),
        ]
        for r in info.rounds
    ]
    return out


def merge_reports(reports: list[WorkerReport], config: LoadConfig, since: float) -> dict[str, Any]:
    """The load processes' Stats as one, and what each process cost."""
    stats = Stats()
    tasks: Counter[str] = Counter()
    crashes: list[str] = []
    lags: list[float] = []
    for report in reports:
        stats.merge(report.stats)
        tasks.update(report.tasks)
        crashes += report.crashes
        lags += report.loop_lag_ms
    out: dict[str, Any] = {"tasks": dict(tasks)}
    if lags:
        out["load_loop_lag_ms"] = {
            "p50": round(float(np.percentile(lags, 50)), 1),
            "p99": round(float(np.percentile(lags, 99)), 1),
            "max": round(max(lags), 1),
        }
    out["load_processes_cpu_seconds"] = [r.cpu_seconds for r in reports]
    out["load_processes_peak_rss_mb"] = [r.peak_rss_mb for r in reports]
    out["load_processes_gc_seconds"] = [round(sum(r.gc_seconds), 2) for r in reports]
    out["load_processes_gc_max_pause_s"] = max((r.gc_max_pause_s for r in reports), default=0.0)
    out["load_processes_torch_imported"] = any(r.torch_imported for r in reports)
    out["participant_crashes"] = crashes[:MAX_ERROR_SAMPLES]
    out.update(stats.summary(config.participants, config.rounds))
    out["slow_calls_per_second"] = stats.slow_timeline(since)
    out["errors"] += stats.rejected_results + stats.client_errors + len(crashes)
    return out


def run(
    config: LoadConfig, coordinator_args: Sequence[str], work_dir: Path | None = None
) -> dict[str, Any]:
    nofile = raise_nofile_limit()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fused-load-")))
        else:
            work = work_dir
            work.mkdir(parents=True, exist_ok=True)
        proc, port, log_path = start_coordinator(work, coordinator_args)
        try:
            out = asyncio.run(drive(config, port, proc.pid))
            usage = process_usage(proc.pid)  # before SIGTERM: /proc/<pid> goes with the process
        except BaseException:
            print(tail(log_path), file=sys.stderr)
            raise
        finally:
            code = stop_coordinator(proc)
        if out["job_status"] != "completed":
            print(tail(log_path), file=sys.stderr)
    load = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "participants": config.participants,
        "rounds": config.rounds,
        **out,
        **usage,
        "coordinator_exit_code": code,
        "main_peak_rss_mb": round(load.ru_maxrss / 1024, 1),
        "main_cpu_seconds": round(load.ru_utime + load.ru_stime, 2),
        "nofile_soft_limit": nofile,
        "cpus": os.cpu_count(),
        "torch_imported": "torch" in sys.modules or out["load_processes_torch_imported"],
        "notes": "pull_task and push_result_wait are long polls (they include waiting for a "
        "task); overall excludes them. push_result is the same PushResult call timed to the "
        "coordinator's response headers, sent once the result is accepted. errors = non-OK "
        "statuses + results not accepted + artifacts failing client-side checks. The load "
        "processes and the coordinator share the machine; load_loop_lag_ms is the load "
        "processes' own event-loop delay, included in latencies.",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--work-dir", type=Path, help="keep the coordinator's state and log here (default: temp)"
    )
    parser.add_argument(
        "--work-s", type=float, default=8.0, help="mean simulated training time per task"
    )
    parser.add_argument("--round-deadline-s", type=float, default=300.0)
    parser.add_argument("--wait-for-participants-s", type=float, default=300.0)
    parser.add_argument("--register-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--register-spread-s",
        type=float,
        default=0.0,
        help="agents start at random times over this many seconds (default: all at once)",
    )
    parser.add_argument(
        "--load-processes",
        type=int,
        default=0,
        help="processes the simulated participants are spread over "
        f"(default: one per {PARTICIPANTS_PER_PROCESS})",
    )
    parser.add_argument("--job-timeout-s", type=float, default=3600.0)
    parser.add_argument(
        "--no-eval-each-round", action="store_true", help="evaluate after the last round only"
    )
    for flag in ("--poll-wait-s", "--heartbeat-interval-s", "--offline-after-s"):
        parser.add_argument(flag, type=float, help="coordinator flag (default: its own)")
    parser.add_argument("--log-level", default="info", help="coordinator flag")
    parser.add_argument(
        "--coordinator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra coordinator flag, repeatable (e.g. --coordinator-arg=--auth-file=auth.toml)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="run the coordinator without authentication (default: a bearer token each)",
    )
    args = parser.parse_args(argv)
    if args.participants < 1 or args.rounds < 1:
        parser.error("--participants and --rounds must be >= 1")
    config = LoadConfig(
        participants=args.participants,
        rounds=args.rounds,
        work_s=args.work_s,
        round_deadline_s=args.round_deadline_s,
        wait_for_participants_s=args.wait_for_participants_s,
        register_timeout_s=args.register_timeout_s,
        register_spread_s=args.register_spread_s,
        job_timeout_s=args.job_timeout_s,
        evaluate_each_round=not args.no_eval_each_round,
        processes=args.load_processes,
    )
    coordinator_args = [f"--log-level={args.log_level}", *capacity_args(args.participants)]
    for name in ("poll_wait_s", "heartbeat_interval_s", "offline_after_s"):
        if getattr(args, name) is not None:
            coordinator_args.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    coordinator_args += args.coordinator_arg
    try:
        with tempfile.TemporaryDirectory(prefix="fused-load-auth-") as secrets_dir:
            if not args.no_auth:
                tokens, operator, auth_file = make_credentials(args.participants, Path(secrets_dir))
                config = dataclasses.replace(config, tokens=tokens, control_token=operator)
                coordinator_args.append(f"--auth-file={auth_file}")
            result = run(config, coordinator_args, args.work_dir)
    except RuntimeError as exc:  # the coordinator did not start, or refused the participants
        print(f"bench.load: {exc}", file=sys.stderr)
        return 1
    assert "torch" not in sys.modules, "the load generator must not import torch"
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    return 0 if result["job_status"] == "completed" and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
