"""A real Prometheus scrapes a federation through a training and a FUSED unlearning job; the
wire byte counters it stored must equal what the coordinator itself reports for the jobs.

The coordinator runs with per_participant_metrics, as deploy/compose does: its /metrics has
`fused_wire_bytes_total` by method, direction and phase, and /metrics/participants has
`fused_participant_wire_bytes_total` by direction, phase and participant (the scrape job
fused-coordinator-participants). What is compared, at a moment when no counter moves (see
`quiescent`):

1. Prometheus == the processes' own endpoints: every wire byte series of every target, and
   `sum by (phase, direction)` of the coordinator's, all phases included; the coordinator's
   totals == the sums of its per-participant series, per phase and direction.
2. Prometheus == the coordinator's round records: for each task phase (train, sensitivity,
   adapter, evaluate) and participant, the coordinator's received (sent) bytes equal the sum
   of the `up` (`down`) bytes of that participant over the jobs' rounds of that phase. Only
   calls tagged with a job, phase and round reach the round records, and those are exactly
   the calls of a task, which the counters label with the task's phase; the untagged calls
   (Register, PullTask, Heartbeat, the operator's control calls) count under phase "none".
3. Participants == coordinator: per phase and participant, what a participant sent equals
   what the coordinator received from it, and the other way round; per phase and method,
   the same for all participants together against the coordinator's totals of the
   participant service. Both ends count the same serialized messages, phase "none"
   included (no call is in flight at that moment), the first Register included.

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
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.proto.v1 import control_pb2, participant_pb2
from fused.tools.launch import LocalFederation, scrape
from tests.e2e.promserver import (
    COORDINATOR_JOB,
    DEPLOY_PROMETHEUS,
    PARTICIPANT_JOB,
    PER_PARTICIPANT_JOB,
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
    stop_patience=0,  # every round: the FA-plateau stop needs an evaluation each round
)
METRIC = "fused_wire_bytes_total"
PER_PARTICIPANT = "fused_participant_wire_bytes_total"
TASK_PHASES = {"train", "sensitivity", "adapter", "evaluate"}
FLIP = {"sent": "received", "received": "sent"}
TARGETS = 2 + PARTICIPANTS  # the coordinator's two paths and each agent's /metrics
PARTICIPANT_METHODS = set(
    participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].methods_by_name
)

Series = tuple[tuple[str, str], ...]  # sorted (label, value) pairs, target labels excluded
Target = tuple[str, str]  # (job, instance)
Counts = dict[tuple[str, ...], int]


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
        fed.start_coordinator("--per-participant-metrics")
        for i in range(PARTICIPANTS):
            fed.start_participant(shards / f"p{i}")
        assert sorted(fed.wait_online(PARTICIPANTS)) == sorted(fed.participants)
        prom_config = loopback_config(fed.metrics_port, fed.participant_metrics)
        with Prometheus(binary, prom_config, root / "prometheus") as prom:
            prom.check_config()
            prom.start()
            prom.wait_scraped_after(time.time(), targets=TARGETS)
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


@dataclasses.dataclass(frozen=True)
class Endpoint:
    port: int
    path: str
    metric: str
    participant: str = ""  # an agent's: the target label Prometheus adds (prometheus.yml)

    def read(self) -> dict[Series, int]:
        """The endpoint's wire byte counters, read directly."""
        samples = scrape(self.port, path=self.path).items()
        return {labels: int(value) for (name, labels), value in samples if name == self.metric}


def targets(fed: LocalFederation) -> dict[Target, Endpoint]:
    """Every target Prometheus scrapes, by (job, instance)."""
    coordinator = f"127.0.0.1:{fed.metrics_port}"
    out = {
        (COORDINATOR_JOB, coordinator): Endpoint(fed.metrics_port, "/metrics", METRIC),
        (PER_PARTICIPANT_JOB, coordinator): Endpoint(
            fed.metrics_port, PARTICIPANTS_PATH, PER_PARTICIPANT
        ),
    }
    for pid, port in fed.participant_metrics.items():
        out[PARTICIPANT_JOB, f"127.0.0.1:{port}"] = Endpoint(port, "/metrics", METRIC, pid)
    return out


def prometheus_series(
    prom: Prometheus, after: float, endpoints: dict[Target, Endpoint]
) -> dict[Target, dict[Series, int]]:
    """(job, instance) -> series -> value of the newest raw sample Prometheus stored, each of
    which must come from a scrape after `after`; an agent's target label is checked and left
    out, as its endpoint does not serve it."""
    out: dict[Target, dict[Series, int]] = defaultdict(dict)
    # a range selector gives raw samples
    for series in prom.query(f'{{__name__=~"{METRIC}|{PER_PARTICIPANT}"}}[30s]'):
        labels = dict(series["metric"])
        stamp, value = series["values"][-1]
        assert float(stamp) > after, (labels, stamp, after)
        target = (labels.pop("job"), labels.pop("instance"))
        endpoint = endpoints[target]
        assert labels.pop("__name__") == endpoint.metric, (target, series["metric"])
        if endpoint.participant:
            assert labels.pop("participant") == endpoint.participant, series["metric"]
        out[target][tuple(sorted(labels.items()))] = int(float(value))
    return dict(out)


@dataclasses.dataclass
class Snapshot:
    direct: dict[Target, dict[Series, int]]  # target -> series -> value, from the endpoints
    stored: dict[Target, dict[Series, int]]  # the same, from Prometheus's newest samples
    by_phase: dict[tuple[str, str], int]  # the coordinator's (phase, direction) sums, PromQL
    seconds: float  # how long it took to find the counters at rest


def quiescent(run: Run, tries: int = 10) -> Snapshot:
    """Read every endpoint (S1), wait for Prometheus to scrape all targets again, query it,
    read every endpoint again (S2). Counters only grow, so if S1 == S2 every sample stored
    in between, and so every query answer, equals S1: "the same moment" made exact."""
    started = time.monotonic()
    endpoints = targets(run.fed)
    for _ in range(tries):
        s1 = {target: endpoint.read() for target, endpoint in endpoints.items()}
        after = time.time()
        run.prom.wait_scraped_after(after, targets=len(endpoints))
        stored = prometheus_series(run.prom, after, endpoints)
        by_phase = {
            (s["metric"]["phase"], s["metric"]["direction"]): int(float(s["value"][1]))
            for s in run.prom.query(
                f'sum by (phase, direction) ({METRIC}{{job="{COORDINATOR_JOB}"}})'
            )
        }
        s2 = {target: endpoint.read() for target, endpoint in endpoints.items()}
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


def differences(ours: Counts, theirs: Counts) -> Any:
    """key -> (participants' count, coordinator's), where they differ: a failure's evidence."""
    keys = sorted(set(ours) | set(theirs))
    return {
        "/".join(k): (ours.get(k, 0), theirs.get(k, 0))
        for k in keys
        if ours.get(k, 0) != theirs.get(k, 0)
    }


def check_agents_mirror(snap: Snapshot, run: Run, coordinator: str) -> None:
    """3. Each participant's own counters mirror the coordinator's per-participant bytes by
    phase; all of them together its totals of the participant service by method and phase."""
    each = by_labels(
        snap.stored[PER_PARTICIPANT_JOB, coordinator], "participant", "phase", "direction"
    )
    by_method: Counts = defaultdict(int)
    for pid, port in sorted(run.fed.participant_metrics.items()):
        agent = snap.stored[PARTICIPANT_JOB, f"127.0.0.1:{port}"]
        mine = by_labels(agent, "phase", "method", "direction")
        for (phase, method, direction), v in mine.items():
            by_method[phase, method, FLIP[direction]] += v
        own: Counts = {
            (ph, FLIP[d]): v for (ph, d), v in by_labels(agent, "phase", "direction").items()
        }
        seen: Counts = {(ph, d): v for (p, ph, d), v in each.items() if p == pid}
        assert own == seen, (pid, differences(own, seen))
    totals = by_labels(snap.stored[COORDINATOR_JOB, coordinator], "phase", "method", "direction")
    served = {k: v for k, v in totals.items() if k[1] in PARTICIPANT_METHODS}
    assert dict(by_method) == served, differences(by_method, served)


def test_prometheus_bytes_equal_the_coordinators(run: Run) -> None:
    snap = quiescent(run)
    coordinator = f"127.0.0.1:{run.fed.metrics_port}"
    pids = sorted(run.fed.participants)
    each = snap.stored[PER_PARTICIPANT_JOB, coordinator]

    # 1. What Prometheus stored is what the endpoints serve, series by series; the totals
    # are the sums of the per-participant series.
    assert snap.stored == snap.direct
    direct_by_phase = by_labels(snap.direct[COORDINATOR_JOB, coordinator], "phase", "direction")
    assert snap.by_phase == direct_by_phase == by_labels(each, "phase", "direction")
    assert {phase for phase, _ in snap.by_phase} == TASK_PHASES | {"none"}

    # 2. The coordinator's counters per task phase == its round records, per participant.
    records = round_record_bytes(run.jobs)
    counted = by_labels(each, "phase", "participant", "direction")
    in_tasks = {k: v for k, v in counted.items() if k[0] in TASK_PHASES}
    assert in_tasks == records
    for (phase, direction), total in snap.by_phase.items():
        if phase in TASK_PHASES:
            expected = sum(v for (p, _, d), v in records.items() if (p, d) == (phase, direction))
            assert total == expected, (phase, direction)

    # 3. The participants' own counters mirror the coordinator's, phase "none" and the
    # first Register included.
    check_agents_mirror(snap, run, coordinator)
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
    run.prom.wait_scraped_after(time.time(), targets=TARGETS)
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
