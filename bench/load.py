"""Load benchmark: N simulated participants against one coordinator on loopback.

    python -m bench.load [--participants 1000] [--rounds 2] [--json-out PATH]

Starts `python -m fused.coordinator.main` as a subprocess (RLIMIT_NOFILE raised to the hard limit
first, and inherited: at 1000 participants the coordinator holds more than 1024 descriptors),
then drives N participants from this process with grpc.aio, each over its own channel and TCP
connection ("connections" counts them in /proc/net/tcp). Each one does what
participant/agent.py does: Register, then PullTask long polls; a TRAIN task is DownloadBlob,
simulated work, UploadBlob of a perturbed copy of the model, PushResult; an EVALUATE task is
simulated work, then PushResult with per-class counts. Heartbeats go out while a task runs,
on a jittered timer. A training job is started through the ControlService and followed until
it ends. Unless --no-auth, every participant has its own bearer token (the coordinator gets an
auth file of their hashes), so every call goes through real authentication.

The simulated participants never import torch (checked at the end): the update is made with
numpy and safetensors.numpy, in the safetensors layout the coordinator's strict decoder
(common/codecs/tensor_codec.py) accepts.

Prints one JSON object: call counts, errors (any non-OK status, plus results the coordinator
did not accept), p50/p99 latencies per call type, and the coordinator's peak RSS and CPU time.
pull_task latencies are long polls and include the wait for a task; "overall" leaves them out.
Exit status 0 only if the job completed with zero errors.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

from bench.load_assets import make_assets
from bench.load_participant import (
    CONTROL_OPTIONS,
    MAX_ERROR_SAMPLES,
    TERMINAL,
    Metadata,
    ModelCache,
    Participant,
    Settings,
    Stats,
)
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
from fused.cli.pki import new_token, write_auth_file
from fused.client.upload import artifact_chunks
from fused.common.rpc.identity import AuthFile, hash_token
from fused.proto.v1 import (
    common_pb2,
    control_pb2,
    control_pb2_grpc,
)

# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class LoadConfig:
    participants: int
    rounds: int
    work_s: float
    round_deadline_s: float
    wait_for_participants_s: float
    register_timeout_s: float
    job_timeout_s: float
    evaluate_each_round: bool
    tokens: dict[str, str] = field(default_factory=dict)  # participant id -> bearer token
    control_token: str | None = None


def token_for(config: LoadConfig, pid: str) -> str | None:
    return config.tokens.get(pid)


async def follow_job(
    stub: control_pb2_grpc.ControlServiceAsyncStub,
    job_id: str,
    md: Metadata,
    timeout_s: float,
) -> control_pb2.JobInfo:
    """Follow the job's events to its end (logged to stderr); returns its final JobInfo."""

    async def watch() -> None:
        call = stub.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), metadata=md)
        async for event in call:
            log(f"{event.kind}: {event.message}")

    deadline = time.monotonic() + timeout_s
    while True:
        # WatchJob ends when the job does; GetJob confirms, also if the stream broke.
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await asyncio.wait_for(watch(), timeout=max(1.0, deadline - time.monotonic()))
        info = await stub.GetJob(control_pb2.GetJobRequest(job_id=job_id), timeout=60, metadata=md)
        if info.status in TERMINAL or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(1.0)


def log(message: str) -> None:
    print(f"[bench.load] {message}", file=sys.stderr, flush=True)


async def sample(
    pid: int, stats: Stats, peak: dict[str, int], lags: list[float], every_s: float = 0.1
) -> None:
    """Track the coordinator's peak open file descriptors and this process's event-loop lag
    (how late a timer fires: latencies measured here include it); log progress every 10 s."""
    last_log = time.monotonic()
    while True:
        peak["coordinator_peak_fds"] = max(peak.get("coordinator_peak_fds", 0), open_fds(pid))
        if time.monotonic() - last_log >= 10.0:
            last_log = time.monotonic()
            calls = sum(stats.calls.values())
            log(f"{calls} calls, {sum(stats.errors.values())} failed; fds {open_fds(pid)}")
        before = time.perf_counter()
        await asyncio.sleep(every_s)
        lags.append((time.perf_counter() - before - every_s) * 1000.0)


async def wait_registered(
    done: asyncio.Event, counter: list[int], stats: Stats, timeout_s: float
) -> None:
    """Until every participant registered; fails early when all registrations are refused."""
    deadline = time.monotonic() + timeout_s
    while not done.is_set():
        refused_all = counter[0] == 0 and stats.errors["register"] >= counter[1]
        if refused_all or time.monotonic() > deadline:
            raise RuntimeError(
                f"{counter[0]} of {counter[1]} participants registered; "
                f"errors: {stats.error_samples}"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=0.5)


async def drive(config: LoadConfig, port: int, coordinator_pid: int) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    stats = Stats()
    models = ModelCache()
    all_registered = asyncio.Event()
    counter = [0, config.participants]
    summary, initial_weights = make_assets()
    settings = Settings(
        target, config.work_s, summary, register_timeout_s=config.register_timeout_s
    )
    participants = [
        Participant(
            i,
            settings,
            stats,
            models,
            all_registered,
            counter,
            token_for(config, f"load-{i:05d}"),
        )
        for i in range(config.participants)
    ]
    started = time.monotonic()
    peak: dict[str, int] = {}
    lags: list[float] = []
    sampler = asyncio.create_task(sample(coordinator_pid, stats, peak, lags))
    runners = [asyncio.create_task(p.run()) for p in participants]
    out: dict[str, Any] = {}
    try:
        await wait_registered(all_registered, counter, stats, config.wait_for_participants_s)
        out["register_all_seconds"] = round(time.monotonic() - started, 2)
        out["connections"] = established_to(port)  # before the control channel opens
        out["coordinator_open_fds"] = open_fds(coordinator_pid)
        log(
            f"{config.participants} registered in {out['register_all_seconds']} s "
            f"over {out['connections']} connections"
        )
        control_md: Metadata = (
            (("authorization", f"Bearer {config.control_token}"),) if config.control_token else ()
        )
        async with grpc.aio.insecure_channel(target, options=CONTROL_OPTIONS) as channel:
            control = control_pb2_grpc.ControlServiceStub(channel)
            initial = await control.UploadArtifact(
                artifact_chunks(initial_weights), timeout=30, metadata=control_md
            )
            spec = control_pb2.TrainingSpec(
                model="mlp",
                init_weights=initial.digest,
                rounds=config.rounds,
                train=common_pb2.TrainConfig(
                    local_epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32
                ),
                participants_per_round=0,  # all
                min_participants=config.participants,
                round_deadline_s=config.round_deadline_s,
                seed=0,
                wait_for_participants_s=config.wait_for_participants_s,
                evaluate_each_round=config.evaluate_each_round,
            )
            job = await control.StartTraining(
                control_pb2.StartTrainingRequest(spec=spec), timeout=30, metadata=control_md
            )
            job_started = time.monotonic()
            info = await follow_job(control, job.job_id, control_md, config.job_timeout_s)
            out["job_seconds"] = round(time.monotonic() - job_started, 2)
    finally:
        sampler.cancel()
        for runner in runners:
            runner.cancel()
        results = await asyncio.gather(*runners, return_exceptions=True)
        await asyncio.gather(sampler, return_exceptions=True)
        crashed = [r for r in results if not isinstance(r, asyncio.CancelledError)]
        await asyncio.gather(*(p.close() for p in participants))
    out["wall_seconds"] = round(time.monotonic() - started, 2)
    out.update(peak)
    if lags:
        out["load_loop_lag_ms"] = {
            "p50": round(float(np.percentile(lags, 50)), 1),
            "p99": round(float(np.percentile(lags, 99)), 1),
            "max": round(max(lags), 1),
        }
    out["job_id"] = info.job_id
    out["job_status"] = info.status
    out["job_reason"] = info.reason
    out["round_seconds"] = [
        {"phase": r.phase, "round": r.round, "seconds": round(r.finished_at - r.started_at, 2)}
        for r in info.rounds
    ]
    tasks: Counter[str] = Counter()
    for p in participants:
        tasks.update(p.tasks)
    out["tasks"] = dict(tasks)
    out["participant_crashes"] = [repr(r) for r in crashed[:MAX_ERROR_SAMPLES]]
    out.update(stats.summary())
    out["errors"] += stats.rejected_results + stats.client_errors + len(crashed)
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
        "load_peak_rss_mb": round(load.ru_maxrss / 1024, 1),
        "load_cpu_seconds": round(load.ru_utime + load.ru_stime, 2),
        "nofile_soft_limit": nofile,
        "cpus": os.cpu_count(),
        "torch_imported": "torch" in sys.modules,
        "notes": "pull_task latency is a long poll and includes waiting for a task; "
        "overall excludes it. errors = non-OK statuses + results not accepted + "
        "artifacts failing client-side checks. Client and coordinator share the machine; "
        "load_loop_lag_ms is this process's own event-loop delay, included in latencies.",
    }


def make_credentials(participants: int, out: Path) -> tuple[dict[str, str], str, Path]:
    """Fresh bearer tokens for every participant and an operator, and the coordinator's auth
    file of their hashes: the load then runs through real authentication."""
    tokens = {f"load-{i:05d}": new_token() for i in range(participants)}
    operator = new_token()
    auth = AuthFile(
        {pid: hash_token(t) for pid, t in tokens.items()}, {"load": hash_token(operator)}
    )
    path = out / "auth.toml"
    write_auth_file(path, auth)
    return tokens, operator, path


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
        job_timeout_s=args.job_timeout_s,
        evaluate_each_round=not args.no_eval_each_round,
    )
    coordinator_args = [f"--log-level={args.log_level}"]
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
