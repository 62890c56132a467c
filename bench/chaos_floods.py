"""bench.chaos's resource floods: idle TCP connections, slow and stalled upload streams, an
upload flood against the quota, and too many concurrent streams. Each runs while a training
job of the honest three is in progress, checks the exact answer the flood gets, and checks that
the job completes with all three."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from bench.chaos_federation import (
    MAX_UPLOAD_MB,
    PARTICIPANTS,
    UPLOAD_IDLE_S,
    UPLOAD_MIN_KIB_S,
    UPLOAD_QUOTA_MB,
    UPLOAD_STREAMS,
    Chaos,
    check,
    committed,
)
from bench.raw_participant import (
    Answer,
    RawParticipant,
    byte_chunks,
    chunks,
    gated,
    sha256,
    trickle,
)
from bench.tcp_flood import Flood, flood_size
from fused.common.rpc.channels import ServerLimits
from fused.proto.v1 import common_pb2, participant_pb2

FLOOD_CONNECTIONS = 20_000  # as observed exhausting the coordinator; capped by our files limit
FLOOD_SOURCE = "127.0.0.2"  # another loopback address than the honest agents'
DEFAULTS = ServerLimits()  # the chaos coordinator runs with the default connection limits
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class Held:
    raw: RawParticipant
    task: participant_pb2.Task

    def chunks(self, blob: bytes, size: int = 1 << 20) -> Iterator[common_pb2.BlobChunk]:
        return chunks(blob, self.task.job_id, self.task.round, size=size)


@contextlib.contextmanager
def held_task(chaos: Chaos, pid: str, rounds: int = 2) -> Iterator[Held]:
    """A hand-written participant holding its round-1 task of a training job with the honest
    three (it beats meanwhile); it declines every task at the end, and the job must complete
    with the three in every round."""
    raw = RawParticipant(chaos.fed.address, pid)
    raw.register()
    job_id = chaos.train(rounds=rounds, min_participants=len(PARTICIPANTS))
    try:
        with raw.alive():
            task = raw.pull_task()
            check(task.job_id == job_id, f"{pid} got a task of {task.job_id}, not {job_id}")
            yield Held(raw, task)
            raw.decline(task)
            info = chaos.wait_until(job_id, lambda j: _declined(raw, j.status))
    finally:
        raw.close()
    check(info.status == "completed", f"job {info.status}: {info.reason}")
    for r in committed(info):
        check(list(r.participants) == list(PARTICIPANTS), f"round {r.round}: {r.participants}")


def _declined(raw: RawParticipant, status: str) -> bool:
    """Decline what the job still offers `raw`; True once the job has ended."""
    if status in ("completed", "failed"):
        return True
    task = raw.pull(wait_s=0.2)
    if task is not None:
        raw.decline(task)
    return False


# --------------------------------------------------------------------------- scenarios


def idle_connection_flood(chaos: Chaos) -> str:
    """Idle TCP connections (as many as our files limit allows, up to 20,000) from another
    loopback address, held and re-opened while a job is in progress: the coordinator holds at
    most its connection cap and closes the rest, and the job completes with all three."""
    assert chaos.fed.coordinator is not None
    pid, cap = chaos.fed.coordinator.pid, DEFAULTS.max_connections
    count = flood_size(FLOOD_CONNECTIONS)
    job_id = chaos.train(rounds=40, min_participants=len(PARTICIPANTS))
    chaos.wait_until(job_id, lambda j: j.round >= 1)
    with Flood(("127.0.0.1", chaos.fed.port), count, FLOOD_SOURCE, pid) as flood:
        check(flood.wait_server_fds(cap), f"the coordinator never held {cap} connections")
        at_cap = chaos.job(job_id)
        check(at_cap.status == "running", f"the job was {at_cap.status} when the flood peaked")
        info = chaos.finished(job_id)
        flood.wait_opened()
    stats = flood.stats
    check(info.status == "completed", f"job {info.status} under the flood: {info.reason}")
    for r in committed(info):
        check(list(r.participants) == list(PARTICIPANTS), f"round {r.round}: {r.participants}")
    check(stats.server_fds_peak < cap + 256, f"coordinator held {stats.server_fds_peak} fds")
    check(stats.closed > 0, "the coordinator closed none of the flood's connections")
    return (
        f"{count} idle connections from {FLOOD_SOURCE} ({stats.opened} opened in all, "
        f"{stats.closed} closed by the coordinator, cap {cap}, handshake timeout "
        f"{DEFAULTS.handshake_timeout_s:g} s); its descriptors peaked at "
        f"{stats.server_fds_peak}; the job, at round {at_cap.round} when the flood peaked, "
        f"completed with all {len(PARTICIPANTS)} in each of its {len(committed(info))} rounds"
    )


def slow_stream_upload(chaos: Chaos) -> str:
    """One byte every ten seconds (the observed attack) and a faster slow loris (one byte a
    second, never idle): both cut with DEADLINE_EXCEEDED, told where to resume."""
    stop = threading.Event()
    with held_task(chaos, "loris") as held:
        blob = b"slow" * 256
        sparse = held.raw.upload(trickle(byte_chunks(blob, held.task.job_id, 1), 10.0, stop))
        loris = held.raw.upload(trickle(byte_chunks(blob[::-1], held.task.job_id, 1), 1.0, stop))
        stop.set()
        resumable = held.raw.upload_offset(sha256(blob[::-1]))
    idle = f"upload stream sent nothing for {UPLOAD_IDLE_S:g} s; resume at offset 1"
    check(sparse == Answer(grpc.StatusCode.DEADLINE_EXCEEDED, idle), f"1 byte/10 s: {sparse}")
    slow = re.fullmatch(
        rf"upload stream too slow: (\d+) bytes in \d+ s, under {UPLOAD_MIN_KIB_S << 10} "
        r"bytes/s; resume at offset (\d+)",
        loris.details,
    )
    check(loris.code == grpc.StatusCode.DEADLINE_EXCEEDED and slow is not None, f"{loris}")
    assert slow is not None
    check(slow[1] == slow[2] == str(resumable), f"{loris}; the coordinator holds {resumable}")
    return f"one byte every 10 s: '{sparse}'; one byte a second: '{loris}'; the job completed"


def upload_quota_flood(chaos: Chaos) -> str:
    """A participant uploads maximum-size blobs as fast as it can: those that fit its quota
    are stored, the next is refused with RESOURCE_EXHAUSTED, nothing more is written."""
    size, quota = MAX_UPLOAD_MB << 20, UPLOAD_QUOTA_MB << 20
    answers: list[Answer] = []
    started = time.monotonic()
    with held_task(chaos, "hoarder") as held:
        while not answers or answers[-1].code == grpc.StatusCode.OK:
            answers.append(held.raw.upload(held.chunks(os.urandom(size))))
            check(len(answers) <= quota // size + 1, f"{len(answers)} uploads accepted")
        seconds = time.monotonic() - started
    refused = Answer(
        EXHAUSTED,
        f"upload quota exceeded: {quota} bytes held and {size} declared, above the quota of "
        f"{quota} bytes (uploads no accepted result names are kept until no job runs)",
    )
    check(answers[-1] == refused, f"upload {len(answers)}: {answers[-1]}")
    spool = chaos.fed.work_dir / "state" / "uploads" / "hoarder"
    parts = sum(p.stat().st_size for p in spool.glob("*.part")) if spool.exists() else 0
    check(parts == 0, f"{parts} bytes of parts left by refused uploads")
    return (
        f"{len(answers) - 1} uploads of {MAX_UPLOAD_MB} MiB stored in {seconds:.1f} s, then "
        f"'{refused}'"
    )


def concurrent_upload_streams(chaos: Chaos) -> str:
    """One stream more than the cap, all open at once: the extra one is refused at once, the
    others complete."""
    gate = threading.Event()
    with held_task(chaos, "streamer") as held:
        blobs = [bytes([i]) * 4096 for i in range(UPLOAD_STREAMS)]
        streams = [held.raw.start_upload(gated(held.chunks(b, 1024), gate, 1)) for b in blobs]
        try:
            _wait_admitted(chaos, "streamer", [sha256(b) for b in blobs])
            extra = held.raw.upload(held.chunks(b"extra" * 100))
        finally:
            gate.set()
        done = [s.result(timeout=30).blob_id for s in streams]
    limit = f"too many concurrent uploads: {UPLOAD_STREAMS} streams open (limit {UPLOAD_STREAMS})"
    check(extra == Answer(EXHAUSTED, limit), f"stream {UPLOAD_STREAMS + 1}: {extra}")
    check(done == [sha256(b) for b in blobs], f"the admitted streams stored {done}")
    return f"stream {UPLOAD_STREAMS + 1}: '{extra}'; the {UPLOAD_STREAMS} others completed"


def _wait_admitted(chaos: Chaos, pid: str, digests: list[str]) -> None:
    spool = chaos.fed.work_dir / "state" / "uploads" / pid
    deadline = time.monotonic() + 10
    while not all((spool / f"{d}.part").exists() for d in digests):
        check(time.monotonic() < deadline, f"{pid}'s streams were not admitted")
        time.sleep(0.02)
