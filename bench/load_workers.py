"""bench.load's load processes: the simulated participants, spread over several processes.

One asyncio process drives a few thousand participants before its own event loop (and the
GIL) delays their calls, which would then count as coordinator latency. So the participants
are split into contiguous slices, one per spawned process (never forked: no gRPC state is
inherited). Each process reports progress through shared counters and, when told to stop,
its Stats and resource use through a queue; the parent merges them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.load_artifacts import ModelCache
from bench.load_participant import Participant, Settings
from bench.load_stats import Stats

PARTICIPANTS_PER_PROCESS = 2500  # the default split: --load-processes 0
PROGRESS_SLOTS = 3  # per process: participants registered, calls made, calls failed
REPORT_TIMEOUT_S = 120.0
GC_YOUNG = 700  # Python's default
GC_FULL_EVERY = 1000  # gen1 collections per full one (default 10)


class GcPauses:
    """The process's time in the cyclic garbage collector (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.seconds[info["generation"]] += pause
        self.longest = max(self.longest, pause)


def default_processes(participants: int) -> int:
    return max(1, math.ceil(participants / PARTICIPANTS_PER_PROCESS))


@dataclass(frozen=True)
class Slice:
    """The participants one process simulates: indexes first .. first + len(tokens) - 1."""

    first: int
    tokens: tuple[str | None, ...]  # bearer token of each (None: no auth)
    settings: Settings


@dataclass
class WorkerReport:
    stats: Stats
    tasks: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    loop_lag_ms: list[float] = field(default_factory=list)
    gc_seconds: tuple[float, float, float] = (0.0, 0.0, 0.0)  # collecting, by generation
    gc_max_pause_s: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    torch_imported: bool = False


def slices(
    participants: int, processes: int, settings: Settings, tokens: dict[str, str]
) -> list[Slice]:
    """Contiguous, near-equal slices of load-00000 .. load-<participants - 1>."""
    bounds = [round(i * participants / processes) for i in range(processes + 1)]
    return [
        Slice(lo, tuple(tokens.get(f"load-{i:05d}") for i in range(lo, hi)), settings)
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]


class LoadProcesses:
    """The spawned load processes; progress read from shared counters."""

    def __init__(self, parts: Sequence[Slice]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._progress = ctx.Array("q", PROGRESS_SLOTS * len(parts), lock=False)
        self._stop = ctx.Event()
        self._reports: multiprocessing.queues.Queue[WorkerReport] = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=work,
                args=(part, index, self._progress, self._stop, self._reports),
                name=f"bench-load-{index}",
                daemon=True,
            )
            for index, part in enumerate(parts)
        ]

    def __len__(self) -> int:
        return len(self._procs)

    def start(self) -> None:
        for proc in self._procs:
            proc.start()

    def _total(self, slot: int) -> int:
        return sum(self._progress[i] for i in range(slot, len(self._progress), PROGRESS_SLOTS))

    def registered(self) -> int:
        return self._total(0)

    def calls(self) -> tuple[int, int]:
        """(calls made, calls failed) so far, as last reported."""
        return self._total(1), self._total(2)

    def dead(self) -> list[str]:
        return [f"{p.name} exited {p.exitcode}" for p in self._procs if p.exitcode not in (None, 0)]

    async def stop(self) -> list[WorkerReport]:
        """Stop every participant; each process's report (one that never reports is a crash)."""
        self._stop.set()
        reports = []
        for proc in self._procs:
            try:
                got = await asyncio.to_thread(self._reports.get, True, REPORT_TIMEOUT_S)
            except queue.Empty:
                got = WorkerReport(Stats(), crashes=[f"{proc.name}: no report"])
            reports.append(got)
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 10.0)
            if proc.is_alive():
                proc.kill()
        return reports


# --------------------------------------------------------------------------- in the process


def work(
    part: Slice,
    index: int,
    progress: Any,  # the shared counters (a ctypes array)
    stop: multiprocessing.synchronize.Event,
    out: multiprocessing.queues.Queue[WorkerReport],
) -> None:
    pauses = GcPauses()
    report = asyncio.run(_serve(part, index, progress, stop))
    young, middle, full = (round(s, 3) for s in pauses.seconds)
    report.gc_seconds = (young, middle, full)
    report.gc_max_pause_s = round(pauses.longest, 3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 2)
    report.peak_rss_mb = round(usage.ru_maxrss / 1024, 1)
    report.torch_imported = "torch" in sys.modules
    out.put(report)


async def _serve(
    part: Slice, index: int, progress: Any, stop: multiprocessing.synchronize.Event
) -> WorkerReport:
    stats = Stats()
    models = ModelCache()
    base = index * PROGRESS_SLOTS

    def registered() -> None:
        progress[base] += 1

    participants = [
        Participant(part.first + i, part.settings, stats, models, registered, token)
        for i, token in enumerate(part.tokens)
    ]
    # What start-up made is never scanned again, and full collections are rare: each one
    # scans every live call of a few thousand agents and stalls all of them (seconds).
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, GC_FULL_EVERY)
    runners = [asyncio.create_task(p.run()) for p in participants]
    lags: list[float] = []
    every_s = 0.1
    while not stop.is_set():  # the loop's own delay: latencies measured here include it
        before = time.perf_counter()
        await asyncio.sleep(every_s)
        lags.append((time.perf_counter() - before - every_s) * 1000.0)
        progress[base + 1] = sum(stats.calls.values())
        progress[base + 2] = sum(stats.errors.values())
    for runner in runners:
        runner.cancel()
    results = await asyncio.gather(*runners, return_exceptions=True)
    await asyncio.gather(*(p.close() for p in participants))
    crashes = [repr(r) for r in results if not isinstance(r, asyncio.CancelledError)]
    tasks: Counter[str] = Counter()
    for p in participants:
        tasks.update(p.tasks)
    return WorkerReport(stats, tasks, crashes, lags)
