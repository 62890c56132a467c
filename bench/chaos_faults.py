"""bench.chaos's fault scenarios: a participant killed or frozen mid-round, the coordinator
killed or stopped mid-job (it resumes to the bit-identical model), a corrupted artifact, a lost
quorum. Each returns a one-line account of what held, or raises Failed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import grpc

from bench.chaos_federation import (
    COORDINATOR_ARGS,
    DEADLINE_S,
    PARTICIPANTS,
    Chaos,
    Failed,
    check,
    committed,
    result_version,
    shard_sizes,
)
from fused.proto.v1 import common_pb2, control_pb2
from fused.tools.demo import export_sha256


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


def killed_and_resumed(
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
    sha, after = killed_and_resumed(
        chaos, lambda: chaos.train(rounds=4, min_participants=3, seed=11), "train", 2
    )
    return (
        f"coordinator SIGKILLed after training round {after} committed; the job resumed at "
        f"round {after + 1}; final model equals the uninterrupted run's (sha256 {sha[:16]})"
    )


def coordinator_stopped_gracefully_mid_training(chaos: Chaos) -> str:
    """SIGTERM (an upgrade) mid-job: the job is left to resume, not failed."""
    sha, after = killed_and_resumed(
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
    sha, after = killed_and_resumed(chaos, lambda: chaos.unlearn(base, "p2"), "adapter", 2)
    return (
        f"coordinator SIGKILLed after adapter round {after} committed; the unlearning job "
        f"resumed (sensitivity ranking and adapter values kept) and its merged model equals "
        f"the uninterrupted run's (sha256 {sha[:16]})"
    )


def coordinator_killed_mid_stacked_unlearning(chaos: Chaos) -> str:
    """A second request stacked on the first one's adapter version (p2 forgotten, then class
    3), killed after adapter round 2: it resumes to the uninterrupted run's model, and the
    ledger gets exactly one entry for the job."""
    base = result_version(chaos.finished(chaos.train(rounds=2, min_participants=3, seed=3)))
    first = chaos.finished(chaos.unlearn(base, "p2"))
    check(first.status == "completed", f"first request {first.status}: {first.reason}")
    class_3 = common_pb2.ForgetSpec(paradigm="class", class_label=3)
    stacked = result_version(first)
    sha, after = killed_and_resumed(chaos, lambda: chaos.forget(stacked, class_3), "adapter", 2)
    entries = chaos.control.ListLedger(control_pb2.ListLedgerRequest()).entries
    per_job = Counter(e.job_id for e in entries)
    check(all(n == 1 for n in per_job.values()), f"ledger entries per job: {dict(per_job)}")
    return (
        f"a class request stacked on an adapter version, SIGKILLed after adapter round {after}, "
        f"resumed to the uninterrupted run's model (sha256 {sha[:16]}); one ledger entry per job"
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
