"""A real Prometheus scrapes a federation through a training and a FUSED unlearning job; the
wire byte counters it stored must equal what the coordinator itself reports for the jobs.

What is compared, at a moment when no counter moves (see `quiescent`):

1. Prometheus == the processes' own /metrics: every `fused_wire_bytes_total` series of every
   target, and `sum by (phase, direction)` of the coordinator's, all phases included.
2. Prometheus == the coordinator's round records: for each task phase (train, sensitivity,
   adapter, evaluate) and participant, the coordinator's received (sent) bytes equal the sum
   of the `up` (`down`) bytes of that participant over the jobs' rounds of that phase. Only
   calls tagged with a job, phase and round reach the round records, and those are exactly
   the calls of a task, which the counters label with the task's phase; the untagged calls
   (Register, PullTask, Heartbeat, the operator's control calls) count under phase "none".
3. Participants == coordinator: per phase, method and participant, what a participant sent
   equals what the coordinator received from it, and the other way round; both count the
   same serialized messages, phase "none" included (no call is in flight at that moment),
   the first Register included.

It also checks that the alert rules of deploy/prometheus/alerts.yml load and that none is
pending or firing at the end of the healthy run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from fused.client.initial_weights import start_training
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation, scrape
from tests.e2e.promserver import (
    COORDINATOR_JOB,
    DEPLOY_PROMETHEUS,
    PARTICIPANT_JOB,
    Prometheus,
    loopback_config,
)

PARTICIPANTS = 3
TRAIN = TrainConfig(local_epochs=1, lr=0.05, momentum=0.9, batch_size=32)
TRAINING = TrainingSpec(
    rounds=3,
    train=TRAIN,
    min_participants=PARTICIPANTS,
    round_deadline_s=60,
    evaluate_each_round=False,
)
UNLEARNING = UnlearningSpec(
    forget=ForgetSpec("participant", participant_id="p0"),
    config=FusedConfig(top_k=2, density=0.05),
    rounds=2,
    train=TRAIN,
    min_participants=PARTICIPANTS - 1,
    round_deadline_s=60,
    evaluate_each_round=False,
)
METRIC = "fused_wire_bytes_total"
TASK_PHASES = {"train", "sensitivity", "adapter", "evaluate"}
FLIP = {"sent": "received", "received": "sent"}

Series = tuple[tuple[str, str], ...]  # sorted (label, value) pairs, target labels excluded


@dataclasses.dataclass
class Run:
    fed: LocalFederation
    prom: Prometheus
    jobs: list[control_pb2.JobInfo]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    binary = shutil.which("prometheus")
    if binary is None:  # `make e2e` must fail, not skip, without it
        pytest.fail("`prometheus` is not installed (Debian: apt-get install prometheus)")
    root = tmp_path_factory.mktemp("e2e")
    shards = root / "shards"
    config = PartitionConfig(num_participants=PARTICIPANTS, seed=0, attacker=0)
    partition_to_directory("digits", None, shards, config)
    with LocalFederation(root / "processes") as fed:
        fed.start_coordinator()
        for i in range(PARTICIPANTS):
            fed.start_participant(shards / f"p{i}")
        assert sorted(fed.wait_online(PARTICIPANTS)) == sorted(fed.participants)
        prom_config = loopback_config(fed.metrics_port, fed.participant_metrics)
        with Prometheus(binary, prom_config, root / "prometheus") as prom:
            prom.check_config()
            prom.start()
            prom.wait_scraped_after(time.time(), targets=1 + PARTICIPANTS)
            stub = fed.control()
            trained = follow(fed, start_training(stub, TRAINING))
            request_u = control_pb2.StartUnlearningRequest(
                spec=unlearning_spec_to_proto(UNLEARNING)
            )
            unlearned = follow(fed, stub.StartUnlearning(request_u, timeout=30))
            yield Run(fed, prom, [trained, unlearned])


def follow(fed: LocalFederation, job: control_pb2.JobInfo) -> control_pb2.JobInfo:
    """Wait for the job to end; its final record, which must say completed."""
    stub = fed.control()
    list(stub.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=300))
    info: control_pb2.JobInfo = stub.GetJob(control_pb2.GetJobRequest(job_id=job.job_id))
    assert info.status == "completed", f"{info.kind} job {info.job_id}: {info.reason}"
    return info


def wire_bytes(port: int) -> dict[Series, int]:
    """The byte counters of one /metrics endpoint, read directly."""
    return {labels: int(value) for (name, labels), value in scrape(port).items() if name == METRIC}


def targets(fed: LocalFederation) -> dict[str, int]:
    """instance label -> metrics port, for every target Prometheus scrapes."""
    ports = [fed.metrics_port, *fed.participant_metrics.values()]
    return {f"127.0.0.1:{port}": port for port in ports}


def prometheus_series(prom: Prometheus, after: float) -> dict[str, dict[Series, int]]:
    """instance -> series -> value of the newest raw sample Prometheus stored, each of
    which must come from a scrape after `after`."""
    out: dict[str, dict[Series, int]] = defaultdict(dict)
    for series in prom.query(f"{METRIC}[30s]"):  # a range selector gives raw samples
        labels = dict(series["metric"])
        stamp, value = series["values"][-1]
        assert float(stamp) > after, (labels, stamp, after)
        instance, job = labels.pop("instance"), labels.pop("job")
        del labels["__name__"]
        assert job in {COORDINATOR_JOB, PARTICIPANT_JOB}, job
        out[instance][tuple(sorted(labels.items()))] = int(float(value))
    return dict(out)


@dataclasses.dataclass
class Snapshot:
    direct: dict[str, dict[Series, int]]  # instance -> series -> value, from /metrics
    stored: dict[str, dict[Series, int]]  # the same, from Prometheus's newest samples
    by_phase: dict[tuple[str, str], int]  # the coordinator's (phase, direction) sums, PromQL
    seconds: float  # how long it took to find the counters at rest


def quiescent(run: Run, tries: int = 10) -> Snapshot:
    """Read every endpoint (S1), wait for Prometheus to scrape all targets again, query it,
    read every endpoint again (S2). Counters only grow, so if S1 == S2 every sample stored
    in between, and so every query answer, equals S1: "the same moment" made exact."""
    started = time.monotonic()
    ports = targets(run.fed)
    for _ in range(tries):
        s1 = {instance: wire_bytes(port) for instance, port in ports.items()}
        after = time.time()
        run.prom.wait_scraped_after(after, targets=len(ports))
        stored = prometheus_series(run.prom, after)
        by_phase = {
            (s["metric"]["phase"], s["metric"]["direction"]): int(float(s["value"][1]))
            for s in run.prom.query(
                f'sum by (phase, direction) ({METRIC}{{job="{COORDINATOR_JOB}"}})'
            )
        }
        s2 = {instance: wire_bytes(port) for instance, port in ports.items()}
        if s1 == s2:
            return Snapshot(s1, stored, by_phase, time.monotonic() - started)
    raise AssertionError(f"the wire byte counters kept moving over {tries} tries")


def round_record_bytes(jobs: list[control_pb2.JobInfo]) -> dict[tuple[str, str, str], int]:
    """(phase, participant, coordinator-side direction) -> bytes, summed over the jobs'
    round records: up = received by the coordinator, down = sent by it."""
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for job in jobs:
        assert job.status == "completed", job.reason
        for r in job.rounds:
            moved = json.loads(r.metrics_json)["bytes"]
            assert moved["total"] == sum(moved["up"].values()) + sum(moved["down"].values())
            for pid, n in moved["up"].items():
                out[r.phase, pid, "received"] += n
            for pid, n in moved["down"].items():
                out[r.phase, pid, "sent"] += n
    return dict(out)


def by_labels(series: dict[Series, int], *names: str) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = defaultdict(int)
    for labels, value in series.items():
        d = dict(labels)
        out[tuple(d[n] for n in names)] += value
    return dict(out)


def method_diff(
    agent: dict[Series, int], coordinator: dict[Series, int], pid: str
) -> dict[str, tuple[int, int]]:
    """(phase/method/participant's direction) -> (participant's count, coordinator's), where
    they differ: the evidence for a failure."""
    ours = by_labels(agent, "phase", "method", "direction")
    theirs: dict[tuple[str, ...], int] = {
        (ph, m, FLIP[d]): v
        for (ph, m, d, p), v in by_labels(
            coordinator, "phase", "method", "direction", "participant"
        ).items()
        if p == pid
    }
    return {
        "/".join(k): (ours.get(k, 0), theirs.get(k, 0))
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k, 0) != theirs.get(k, 0)
    }


def test_prometheus_bytes_equal_the_coordinators(run: Run) -> None:
    snap = quiescent(run)
    coordinator = f"127.0.0.1:{run.fed.metrics_port}"
    pids = sorted(run.fed.participants)

    # 1. What Prometheus stored is what the endpoints serve, series by series.
    assert snap.stored == snap.direct
    direct_by_phase = by_labels(snap.direct[coordinator], "phase", "direction")
    assert snap.by_phase == direct_by_phase
    assert {phase for phase, _ in snap.by_phase} == TASK_PHASES | {"none"}

    # 2. The coordinator's counters per task phase == its round records, per participant.
    records = round_record_bytes(run.jobs)
    counted = by_labels(snap.stored[coordinator], "phase", "participant", "direction")
    in_tasks = {k: v for k, v in counted.items() if k[0] in TASK_PHASES}
    assert in_tasks == records
    for (phase, direction), total in snap.by_phase.items():
        if phase in TASK_PHASES:
            expected = sum(v for (p, _, d), v in records.items() if (p, d) == (phase, direction))
            assert total == expected, (phase, direction)

    # 3. Each participant's own counters mirror the coordinator's, phase "none" and the
    # first Register included.
    coord = by_labels(snap.stored[coordinator], "phase", "method", "participant", "direction")
    for pid, port in sorted(run.fed.participant_metrics.items()):
        agent = snap.stored[f"127.0.0.1:{port}"]
        assert {dict(labels)["participant"] for labels in agent} == {pid}
        own = by_labels(agent, "phase", "method", "direction")
        mirrored = {(ph, m, pid, FLIP[d]): v for (ph, m, d), v in own.items()}
        seen = {k: v for k, v in coord.items() if k[2] == pid}
        assert mirrored == seen, method_diff(agent, snap.stored[coordinator], pid)
    assert {p for _, p, _ in counted} == {*pids, "-"}  # "-": the operator's calls

    summary = {
        "seconds_to_quiescence": round(snap.seconds, 2),
        "prometheus_by_phase": {f"{p}/{d}": v for (p, d), v in sorted(snap.by_phase.items())},
        "round_records_by_phase": {
            f"{p}/{d}": sum(v for (ph, _, dd), v in records.items() if (ph, dd) == (p, d))
            for p, d in sorted({(ph, d) for ph, _, d in records})
        },
        "rounds": " ".join(f"{r.phase}/{r.round}" for job in run.jobs for r in job.rounds),
    }
    print(json.dumps(summary, indent=2))


def test_alert_rules_load_and_none_fires(run: Run) -> None:
    run.prom.wait_scraped_after(time.time(), targets=1 + PARTICIPANTS)
    after = time.time()  # rules evaluated after this see samples from after the jobs
    deploy_rules = yaml.safe_load((DEPLOY_PROMETHEUS / "alerts.yml").read_text())
    expected = {g["name"]: {r["alert"] for r in g["rules"]} for g in deploy_rules["groups"]}
    deadline = time.monotonic() + 30
    while True:  # until every group has been evaluated on the fresh samples
        groups = run.prom.api("rules")["groups"]
        evaluated = [_rfc3339(g["lastEvaluation"]) > after for g in groups]
        if groups and all(evaluated):
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.2)
    loaded = {g["name"]: {r["name"] for r in g["rules"]} for g in groups}
    assert loaded == expected
    health = {r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]}
    assert all(h == "ok" for h, _ in health.values()), health  # every expression evaluates
    alerts: list[dict[str, Any]] = run.prom.api("alerts")["alerts"]
    assert alerts == [], [(a["labels"]["alertname"], a["state"]) for a in alerts]
    states = {r["name"]: r["state"] for g in groups for r in g["rules"]}
    print(json.dumps({"alert_rules": states}, indent=2))


def _rfc3339(stamp: str) -> float:
    """A Go RFC 3339 time (up to nanoseconds, Z or an offset) as a Unix time."""
    m = re.fullmatch(r"([^.]+?)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    assert m is not None, stamp
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(m[1] + zone).timestamp() + float(m[2] or 0)
