"""`python -m bench.chaos`: fault scenarios with real processes on loopback; prints JSON.

Each scenario breaks something on purpose (SIGKILL, SIGSTOP, a flipped byte on disk) while a
job runs, then checks what must still hold: quorum rounds complete, nothing is counted
twice, a restarted coordinator resumes to the bit-identical model, corruption is refused.
Output: {"scenarios": [{"name", "passed", "detail"}]}; the exit status is 0 only if all pass.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.proto.v1 import common_pb2, control_pb2
from fused.tools.demo import export_sha256
from fused.tools.launch import LocalFederation

PARTICIPANTS = ("p0", "p1", "p2")
OFFLINE_AFTER_S = 3.0
COORDINATOR_ARGS = ("--offline-after-s", str(OFFLINE_AFTER_S), "--heartbeat-interval-s", "0.5")
AGENT_ARGS = ("--backoff-max-s", "1")
DEADLINE_S = 120.0  # far above what any round needs: finishing early shows the reaper worked


class Failed(AssertionError):
    """A scenario's check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass
class Outcome:
    name: str
    passed: bool
    detail: str


class Chaos:
    """One federation of real processes that the scenarios break and restore in turn."""

    def __init__(self, work: Path) -> None:
        self.shards = work / "shards"
        partition_to_directory(
            "digits", None, self.shards, PartitionConfig(num_participants=len(PARTICIPANTS))
        )
        self.fed = LocalFederation(work / "federation")
        self.fed.start_coordinator(*COORDINATOR_ARGS)
        for pid in PARTICIPANTS:
            self.start(pid)
        self.fed.wait_online(len(PARTICIPANTS))
        self.control = self.fed.control()  # one channel; it reconnects across restarts

    def start(self, pid: str) -> None:
        self.fed.start_participant(self.shards / pid, *AGENT_ARGS, name=pid)

    def kill(self, pid: str) -> None:
        proc = self.fed.participants.pop(pid)
        proc.kill()
        proc.wait()

    def restart_coordinator(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.fed.coordinator is not None
        self.fed.coordinator.send_signal(sig)
        self.fed.coordinator.wait(60)
        self.fed.start_coordinator(*COORDINATOR_ARGS, port=self.fed.port)

    def train(self, rounds: int, min_participants: int, seed: int = 7) -> str:
        spec = control_pb2.TrainingSpec(
            rounds=rounds,
            train=common_pb2.TrainConfig(local_epochs=2, lr=0.05, batch_size=32, seed=seed),
            min_participants=min_participants,
            round_deadline_s=DEADLINE_S,
            seed=seed,
            wait_for_participants_s=60,
        )
        job = self.control.StartTraining(control_pb2.StartTrainingRequest(spec=spec))
        return str(job.job_id)

    def unlearn(self, base_version: str, forget_pid: str, seed: int = 5) -> str:
        spec = control_pb2.UnlearningSpec(
            base_version=base_version,
            forget=common_pb2.ForgetSpec(paradigm="participant", participant_id=forget_pid),
            method="fused",
            rounds=4,
            train=common_pb2.TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=seed),
            top_k=2,
            density=0.1,
            min_participants=2,
            round_deadline_s=DEADLINE_S,
            wait_for_participants_s=60,
            seed=seed,
            evaluate_each_round=True,
        )
        job = self.control.StartUnlearning(control_pb2.StartUnlearningRequest(spec=spec))
        return str(job.job_id)

    def job(self, job_id: str) -> control_pb2.JobInfo:
        reply: control_pb2.JobInfo = self.control.GetJob(
            control_pb2.GetJobRequest(job_id=job_id), timeout=10
        )
        return reply

    def wait_until(
        self, job_id: str, done: Callable[[control_pb2.JobInfo], bool], timeout_s: float = 120
    ) -> control_pb2.JobInfo:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = self.job(job_id)
            except grpc.RpcError:  # the coordinator may be restarting
                time.sleep(0.2)
                continue
            if done(info):
                return info
            check(info.status not in ("completed", "failed") or done(info), f"job ended: {info}")
            time.sleep(0.02)
        raise Failed(f"job {job_id} did not reach the awaited state within {timeout_s:g} s")

    def finished(self, job_id: str) -> control_pb2.JobInfo:
        return self.wait_until(job_id, lambda j: j.status in ("completed", "failed"))

    def online(self) -> set[str]:
        reply = self.control.ListParticipants(control_pb2.ListParticipantsRequest())
        return {p.participant_id for p in reply.participants if p.online}

    def close(self) -> None:
        self.fed.stop()


def committed(info: control_pb2.JobInfo, phase: str = "train") -> list[control_pb2.RoundInfo]:
    return [r for r in info.rounds if r.phase == phase]


def shard_sizes(chaos: Chaos) -> dict[str, int]:
    """Training samples each participant registered with."""
    reply = chaos.control.ListParticipants(control_pb2.ListParticipantsRequest())
    return {p.participant_id: p.num_train for p in reply.participants}


def result_version(info: control_pb2.JobInfo) -> str:
    return str(json.loads(info.result_json)["version_id"])


# --------------------------------------------------------------------------- scenarios


def participant_killed_mid_round(chaos: Chaos) -> str:
    """SIGKILL a participant holding a round-1 task (frozen before the job starts, so it
    cannot have answered): the round completes on its quorum, the participant restarts and
    rejoins."""
    chaos.fed.participants["p2"].send_signal(signal.SIGSTOP)  # its long poll stays open
    job_id = chaos.train(rounds=40, min_participants=2)
    chaos.wait_until(job_id, lambda j: j.phase == "train" and j.round >= 1)
    chaos.kill("p2")
    info = chaos.wait_until(job_id, lambda j: len(committed(j)) >= 1)
    r1 = committed(info)[0]
    check("p2" not in r1.participants, f"round 1 aggregated the killed p2: {r1.participants}")
    restarted_at = time.time()
    chaos.start("p2")
    info = chaos.finished(job_id)
    check(info.status == "completed", f"job {info.status}: {info.reason}")
    rounds = committed(info)
    sizes = shard_sizes(chaos)
    for r in rounds:
        parts = list(r.participants)
        check(len(parts) == len(set(parts)), f"round {r.round} counted a participant twice")
        check(len(parts) >= 2, f"round {r.round} aggregated {parts}: below quorum")
        examples = json.loads(r.metrics_json)["num_examples"]
        expected = sum(sizes[p] for p in parts)
        check(examples == expected, f"round {r.round}: {examples} examples, shards hold {expected}")
    rejoined = [r.round for r in rounds if r.started_at > restarted_at and "p2" in r.participants]
    # Rounds are fast: the job may end before the new agent is up. It must then join the next.
    after = chaos.finished(chaos.train(rounds=1, min_participants=3))
    check(after.status == "completed", f"follow-up job without p2: {after.reason}")
    reason = json.loads(r1.metrics_json)["failures"].get("p2", "")
    return (
        f"p2 killed holding its round-1 task; round 1 completed with {list(r1.participants)} "
        f"(p2: '{reason}'); p2 restarted and rejoined (same job's rounds {rejoined[:3]}..., "
        "and a job needing all 3); every round's examples equal its participants' shard sizes "
        "(no double counting)"
    )


def silent_participant_marked_offline(chaos: Chaos) -> str:
    """SIGSTOP a participant (frozen before the job starts, so it holds a round-1 task
    unanswered): it is marked offline and its task failed well before the round deadline;
    after SIGCONT it is back online."""
    victim = chaos.fed.participants["p1"]
    victim.send_signal(signal.SIGSTOP)
    try:
        job_id = chaos.train(rounds=3, min_participants=2)
        info = chaos.wait_until(job_id, lambda j: len(committed(j)) >= 1)
        r1 = committed(info)[0]
        waited = r1.finished_at - r1.started_at
        failures = json.loads(r1.metrics_json)["failures"]
        check("p1" not in r1.participants, f"round 1 aggregated the frozen p1: {r1.participants}")
        check("went silent" in failures.get("p1", ""), f"p1's failure reason: {failures}")
        check(waited < DEADLINE_S / 4, f"round 1 took {waited:.1f} s")
        check("p1" not in chaos.online(), "the frozen p1 is still listed online")
    finally:
        victim.send_signal(signal.SIGCONT)
    info = chaos.finished(job_id)
    check(info.status == "completed", f"job {info.status}: {info.reason}")
    deadline = time.monotonic() + 30
    while "p1" not in chaos.online():
        check(time.monotonic() < deadline, "p1 did not come back online after SIGCONT")
        time.sleep(0.1)
    return (
        f"p1 frozen holding its round-1 task: marked offline and the task failed "
        f"('{failures['p1']}'); round 1 took {waited:.1f} s (deadline {DEADLINE_S:g} s); back "
        "online after SIGCONT"
    )


def _killed_and_resumed(
    chaos: Chaos,
    start: Callable[[], str],
    phase: str,
    after_round: int,
    sig: signal.Signals = signal.SIGKILL,
) -> tuple[str, int]:
    """Run `start` twice: once undisturbed, once with the coordinator stopped by `sig` after
    `after_round` rounds of `phase` commit. Returns (final model sha256, resumed-after round)."""
    reference = chaos.finished(start())
    check(reference.status == "completed", f"reference job {reference.status}: {reference.reason}")
    reference_sha = export_sha256(chaos.fed, result_version(reference))
    job_id = start()
    chaos.wait_until(job_id, lambda j: len(committed(j, phase)) >= after_round)
    chaos.restart_coordinator(sig)
    killed_at = time.time()
    info = chaos.finished(job_id)
    check(info.status == "completed", f"resumed job {info.status}: {info.reason}")
    events = list(chaos.control.WatchJob(control_pb2.WatchJobRequest(job_id=job_id)))
    check(sum(e.kind == "job_resumed" for e in events) == 1, "expected one job_resumed event")
    kept = [r.round for r in committed(info, phase) if r.started_at < killed_at]
    redone = [
        r.round for r in committed(info, phase) if r.round in kept and r.started_at > killed_at
    ]
    check(len(kept) >= after_round and not redone, f"kept rounds {kept}; redone {redone}")
    sha = export_sha256(chaos.fed, result_version(info))
    check(sha == reference_sha, f"final model {sha[:12]} differs from {reference_sha[:12]}")
    return sha, max(kept)


def coordinator_killed_mid_training(chaos: Chaos) -> str:
    """SIGKILL the coordinator after training round 2 commits; the restarted one resumes and
    ends with the same model, bit for bit, as an uninterrupted run with the same seeds."""
    sha, after = _killed_and_resumed(
        chaos, lambda: chaos.train(rounds=4, min_participants=3, seed=11), "train", 2
    )
    return (
        f"coordinator SIGKILLed after training round {after} committed; the job resumed at "
        f"round {after + 1}; final model equals the uninterrupted run's (sha256 {sha[:16]})"
    )


def coordinator_stopped_gracefully_mid_training(chaos: Chaos) -> str:
    """SIGTERM (an upgrade) mid-job: the job is left to resume, not failed."""
    sha, after = _killed_and_resumed(
        chaos,
        lambda: chaos.train(rounds=4, min_participants=3, seed=13),
        "train",
        2,
        signal.SIGTERM,
    )
    return (
        f"coordinator stopped with SIGTERM after training round {after}; the restarted one "
        f"resumed the job and its final model equals the uninterrupted run's ({sha[:16]})"
    )


def coordinator_killed_mid_unlearning(chaos: Chaos) -> str:
    """The same for a FUSED unlearning job, killed after adapter round 2."""
    base = result_version(chaos.finished(chaos.train(rounds=2, min_participants=3, seed=3)))
    sha, after = _killed_and_resumed(chaos, lambda: chaos.unlearn(base, "p2"), "adapter", 2)
    return (
        f"coordinator SIGKILLed after adapter round {after} committed; the unlearning job "
        f"resumed (sensitivity ranking and adapter values kept) and its merged model equals "
        f"the uninterrupted run's (sha256 {sha[:16]})"
    )


def corrupted_artifact_refused(chaos: Chaos) -> str:
    """Flip one byte of a stored model: exports and downloads of it fail with DATA_LOSS."""
    info = chaos.finished(chaos.train(rounds=1, min_participants=3))
    version = result_version(info)
    models = chaos.control.ListModels(control_pb2.ListModelsRequest())
    digest = next(m.digest for m in models.models if m.version_id == version)
    assert chaos.fed.coordinator is not None
    chaos.fed.coordinator.kill()  # the file changes while no process has it verified
    chaos.fed.coordinator.wait()
    path = next((chaos.fed.work_dir / "state" / "artifacts").rglob(digest + "*"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    chaos.fed.start_coordinator(*COORDINATOR_ARGS, port=chaos.fed.port)
    try:
        export_sha256(chaos.fed, version)
        raise Failed("the corrupt model was exported")
    except grpc.RpcError as exc:
        check(exc.code() is grpc.StatusCode.DATA_LOSS, f"export answered {exc.code()}")
        export_error = exc.details() or ""
    chaos.kill("p0")  # a fresh agent has no cached copy: it must download the model
    chaos.start("p0")
    chaos.fed.wait_online(len(PARTICIPANTS))
    request = control_pb2.StartEvaluationRequest(version_id=version, round_deadline_s=30)
    evaluation = chaos.control.StartEvaluation(request)
    ev = chaos.finished(evaluation.job_id)
    failures = json.loads(committed(ev, "evaluate")[0].metrics_json)["failures"]
    check("DATA_LOSS" in failures.get("p0", ""), f"p0's evaluation: {failures}")
    return (
        f"export refused with DATA_LOSS ({export_error[:70]}); a fresh p0's download refused "
        f"too ('{failures['p0'][:70]}'); agents holding a verified copy evaluated on"
    )


def quorum_lost_fails_clearly(chaos: Chaos) -> str:
    """Kill a participant while a job needs all three: the job fails and says why."""
    job_id = chaos.train(rounds=8, min_participants=3)
    chaos.wait_until(job_id, lambda j: len(committed(j)) >= 1)
    chaos.fed.participants["p0"].send_signal(signal.SIGSTOP)
    chaos.kill("p0")
    info = chaos.finished(job_id)
    chaos.start("p0")
    check(info.status == "failed", f"job {info.status} without its quorum")
    check("3 required" in info.reason and "p0" in info.reason, f"reason: {info.reason}")
    return f"job failed with: {info.reason[:160]}"


SCENARIOS: list[Callable[[Chaos], str]] = [
    participant_killed_mid_round,
    silent_participant_marked_offline,
    coordinator_killed_mid_training,
    coordinator_stopped_gracefully_mid_training,
    coordinator_killed_mid_unlearning,
    corrupted_artifact_refused,
    quorum_lost_fails_clearly,
]


def run_scenarios(work: Path, names: set[str] | None = None) -> list[Outcome]:
    chaos = Chaos(work)
    outcomes = []
    try:
        for scenario in SCENARIOS:
            name = scenario.__name__
            if names and name not in names:
                continue
            try:
                chaos.fed.wait_online(len(PARTICIPANTS))
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
    with tempfile.TemporaryDirectory(prefix="fused-chaos-") as tmp:
        outcomes = run_scenarios(args.work_dir or Path(tmp), set(args.only or ()))
    report: dict[str, Any] = {"scenarios": [asdict(o) for o in outcomes]}
    print(json.dumps(report, indent=2))
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
