"""Input floods of bench.chaos: what a caller sends must not grow the coordinator's records,
metrics or logs beyond their bounds (coordinator/limits.py, accounting.py, refusals.py).

The chaos federation runs in local mode, where a caller is whoever its metadata says: these
floods need no credentials, and show what a participant with valid ones could do. Each
scenario checks exact answers and bounds, and returns what it saw as JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import grpc

from bench.chaos_federation import PARTICIPANTS, Chaos, check
from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc
from fused.tools.launch import scrape

FLOOD_CALLS = 1000  # heartbeats of each kind of forged metadata
HUGE_ID = 4_000_000  # characters: with its message, just under the 4 MiB limit
HUGE_CALLS = 50
JOB_INFO_BYTES = 16 << 10  # a 3-round job's record, rounds and all, stays below this
LOG_BYTES = 32 << 10  # what 200 huge-id requests may add to the log
FORGED = "WARNING fused.coordinator.auth: forged"  # after a newline in a task id

Metadata = tuple[tuple[str, str], ...]


def _stub(chaos: Chaos) -> tuple[grpc.Channel, participant_pb2_grpc.ParticipantServiceStub]:
    big = 8 << 20  # above the coordinator's 4 MiB: it must be the one that refuses
    options = [("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)]
    channel = grpc.insecure_channel(chaos.fed.address, options=options)
    return channel, participant_pb2_grpc.ParticipantServiceStub(channel)


def _tally(calls: Iterable[Callable[[], object]]) -> dict[str, int]:
    """How many calls ended with each code and message."""
    seen: Counter[str] = Counter()
    for call in calls:
        try:
            call()
            seen["OK"] += 1
        except grpc.RpcError as exc:
            seen[f"{exc.code().name}: {exc.details()}"] += 1
    return dict(seen)


def _task_md(pid: str, job: str, phase: str, round_number: int) -> Metadata:
    return ((MD_PARTICIPANT, pid), (MD_JOB, job), (MD_PHASE, phase), (MD_ROUND, str(round_number)))


def _forged_heartbeats(
    stub: participant_pb2_grpc.ParticipantServiceStub, job: str, r: int
) -> dict[str, dict[str, int]]:
    kinds: dict[str, Callable[[int], Metadata]] = {
        "1000-character participants": lambda i: _task_md(f"{i:0>1000}", job, "train", r),
        "unregistered participants": lambda i: _task_md(f"x{i}", job, "train", r),
        "p0 in made-up phases": lambda i: _task_md("p0", job, f"ph{i}", r),
    }

    def heartbeats(metadata: Callable[[int], Metadata]) -> Iterator[Callable[[], object]]:
        for i in range(FLOOD_CALLS):
            md = metadata(i)
            beat = participant_pb2.HeartbeatRequest(participant_id=md[0][1])  # as it claims
            yield partial(stub.Heartbeat, beat, metadata=md, timeout=10)

    return {name: _tally(heartbeats(metadata)) for name, metadata in kinds.items()}


def metadata_flood_charges_nothing(chaos: Chaos) -> str:
    """While a training job runs, 3 x 1000 heartbeats whose metadata names the job's round
    under made-up or unregistered participants, or p0 in made-up phases: no round record
    gains a key (before: one per made-up name, 8 MB and GetJob failing), wire-metric labels
    stay the participants', and the job completes."""
    job_id = chaos.train(rounds=3, min_participants=len(PARTICIPANTS))
    running = chaos.wait_until(job_id, lambda j: j.phase == "train" and j.round >= 1)
    channel, stub = _stub(chaos)
    try:
        answers = _forged_heartbeats(stub, job_id, running.round)
    finally:
        channel.close()
    info = chaos.finished(job_id)
    check(info.status == "completed", f"job {info.status}: {info.reason}")
    too_long = (
        "INVALID_ARGUMENT: metadata fused-participant is 1000 characters long "
        "('0000000000000000...'); the limit is 64"
    )
    expected = {
        "1000-character participants": {too_long: FLOOD_CALLS},
        "unregistered participants": {"OK": FLOOD_CALLS},
        "p0 in made-up phases": {"OK": FLOOD_CALLS},
    }
    check(answers == expected, f"answers {answers}")
    keys = sorted({p for r in info.rounds for p in json.loads(r.metrics_json)["bytes"]["up"]})
    check(keys == sorted(PARTICIPANTS), f"round records charge {keys[:5]}... ({len(keys)})")
    size = info.ByteSize()
    check(size < JOB_INFO_BYTES, f"the job's record is {size} bytes")
    labels = sorted(_participant_labels(chaos))
    check(set(labels) <= {*PARTICIPANTS, "-", "unknown"}, f"participant labels {labels[:8]}")
    calls = 3 * FLOOD_CALLS
    return json.dumps(
        {"calls": calls, "round_keys": keys, "job_info_bytes": size, "labels": labels}
    )


def _participant_labels(chaos: Chaos) -> set[str]:
    samples = scrape(chaos.fed.metrics_port, path=PARTICIPANTS_PATH)
    name = "fused_participant_wire_bytes_total"
    return {dict(labels)["participant"] for sample, labels in samples if sample == name}


def _huge_id_calls(
    stub: participant_pb2_grpc.ParticipantServiceStub,
) -> dict[str, Callable[[], object]]:
    md: Metadata = ((MD_PARTICIPANT, "p0"),)
    huge = "t" * HUGE_ID
    error = participant_pb2.TaskError(message="x")
    push = participant_pb2.PushResultRequest(participant_id="p0", task_id=huge, error=error)
    beat = participant_pb2.HeartbeatRequest(participant_id="p0", task_id=huge)
    chunk = common_pb2.BlobChunk(blob_id="ab" * 32, data=b"x", total_size=1, job_id="j" * HUGE_ID)
    newline = participant_pb2.PushResultRequest(
        participant_id="p0", task_id=f"t\n{FORGED}", error=error
    )
    return {
        "UploadBlob naming a 4 MB job": lambda: stub.UploadBlob(iter([chunk]), metadata=md),
        "PushResult of a 4 MB task id": lambda: stub.PushResult(push, metadata=md),
        "Heartbeat of a 4 MB task id": lambda: stub.Heartbeat(beat, metadata=md),
        "PushResult of a task id with a newline": lambda: stub.PushResult(newline, metadata=md),
    }


def _too_long(field: str, letter: str) -> str:
    return f"{field} is {HUGE_ID} characters long ('{letter * 16}...'); the limit is 64"


EXPECTED = {
    "UploadBlob naming a 4 MB job": "upload rejected: " + _too_long("BlobChunk.job_id", "j"),
    "PushResult of a 4 MB task id": "result rejected: "
    + _too_long("PushResultRequest.task_id", "t"),
    "Heartbeat of a 4 MB task id": _too_long("HeartbeatRequest.task_id", "t"),
    "PushResult of a task id with a newline": "result rejected: PushResultRequest.task_id holds "
    "a control character at position 1",
}


def huge_id_log_flood_is_bounded(chaos: Chaos) -> str:
    """50 uploads naming a 4,000,000-character job, 50 results and 50 heartbeats for such a
    task id, and 50 results for a task id holding a newline: each gets INVALID_ARGUMENT with
    a short message, the log grows by a few KB (before: 200 MB from the uploads alone) and no
    line of it is forged."""
    log = Path(chaos.fed.work_dir) / "coordinator.log"
    before = log.stat().st_size
    channel, stub = _stub(chaos)
    try:
        calls = _huge_id_calls(stub)
        answers = {name: _tally([call] * HUGE_CALLS) for name, call in calls.items()}
    finally:
        channel.close()
    wanted = {name: {f"INVALID_ARGUMENT: {m}": HUGE_CALLS} for name, m in EXPECTED.items()}
    check(answers == wanted, f"answers {answers}")
    added = log.read_bytes()[before:]
    check(len(added) < LOG_BYTES, f"the log grew by {len(added)} bytes")
    lines = added.decode(errors="replace").splitlines()
    check(not any(line.startswith(FORGED) for line in lines), "a forged log line")
    check(bool(chaos.online()), "the coordinator lists no participant online")
    summary = {
        "calls": 4 * HUGE_CALLS,
        "log_bytes_added": len(added),
        "log_lines_added": len(lines),
    }
    return json.dumps(summary)
