"""bench.chaos's forget-ledger scenarios: the coordinator killed while a withdrawal's rebuild
job or a consolidation runs. Each resumes to the uninterrupted run's model, bit for bit, and
the ledger holds each change once. Each run starts from a clean ledger (withdraw_all), so the
reference run and the killed run leave out the same data."""

from __future__ import annotations

import grpc

from bench.chaos_faults import killed_and_resumed
from bench.chaos_federation import DEADLINE_S, Chaos, Failed, check, result_version
from fused.proto.v1 import common_pb2, control_pb2

CLASS_3 = common_pb2.ForgetSpec(paradigm="class", class_label=3)


def _base(chaos: Chaos) -> str:
    return result_version(chaos.finished(chaos.train(rounds=2, min_participants=3, seed=3)))


def _applied(chaos: Chaos, job_id: str) -> tuple[str, str]:
    """(version, ledger entry) of a completed unlearning job."""
    info = chaos.finished(job_id)
    check(info.status == "completed", f"request {info.status}: {info.reason}")
    listed = chaos.control.ListLedger(control_pb2.ListLedgerRequest()).entries
    entry = next(e.entry_id for e in listed if e.job_id == job_id)
    return result_version(info), entry


def coordinator_killed_mid_withdrawal(chaos: Chaos) -> str:
    """Two stacked requests (class 3, then p2); withdrawing the first starts a job that
    applies the second again on the base. Killed after its adapter round 2, it resumes to the
    uninterrupted rebuild's model; asking again afterwards changes nothing. (p2 forgotten
    leaves exactly the job's quorum, so the resumed rounds wait for the same participants.)"""
    base = _base(chaos)
    withdrawn: list[str] = []

    def rebuild() -> str:
        chaos.fed.withdraw_all()  # the reference run's requests stop binding the second run
        first, entry = _applied(chaos, chaos.forget(base, CLASS_3))
        _applied(chaos, chaos.unlearn(first, "p2"))
        reply = chaos.control.WithdrawRequest(control_pb2.WithdrawalRequest(entry_id=entry))
        check(bool(reply.job_id), f"withdrawing {entry} started no job: {reply.message}")
        withdrawn.append(entry)
        return str(reply.job_id)

    sha, after = killed_and_resumed(chaos, rebuild, "adapter", 2)
    try:
        chaos.control.WithdrawRequest(control_pb2.WithdrawalRequest(entry_id=withdrawn[-1]))
        raise Failed("withdrawing the same request again was accepted")
    except grpc.RpcError as exc:
        check(exc.code() is grpc.StatusCode.FAILED_PRECONDITION, f"again: {exc.code()}")
    return (
        f"the rebuild after a withdrawal, SIGKILLed after adapter round {after}, resumed to the "
        f"uninterrupted rebuild's model (sha256 {sha[:16]}); withdrawing again is refused "
        "(already withdrawn, nothing left to do)"
    )


def coordinator_killed_mid_consolidation(chaos: Chaos) -> str:
    """A consolidation of one request (p2), killed after retrain round 2: it resumes to the
    uninterrupted consolidation's model, and marks the request consolidated once."""
    sha, after = _consolidation_killed(chaos, "retrain", 2)
    return (
        f"a consolidation SIGKILLed after retrain round {after} resumed to the uninterrupted "
        f"run's model (sha256 {sha[:16]}); its request marked consolidated once"
    )


def coordinator_killed_mid_consolidation_audit(chaos: Chaos) -> str:
    """The same, killed after the chain's audit round, before the retrain starts."""
    sha, after = _consolidation_killed(chaos, "audit", 1)
    return (
        f"a consolidation SIGKILLed after audit round {after} (before retraining) resumed to the "
        f"uninterrupted run's model (sha256 {sha[:16]}); its request marked consolidated once"
    )


def _consolidation_killed(chaos: Chaos, phase: str, after_round: int) -> tuple[str, int]:
    base = _base(chaos)
    entries: list[str] = []
    jobs: list[str] = []

    def consolidate() -> str:
        chaos.fed.withdraw_all()
        _, entry = _applied(chaos, chaos.unlearn(base, "p2"))
        entries.append(entry)
        spec = control_pb2.ConsolidationSpec(
            rounds=4,
            train=common_pb2.TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=9),
            seed=9,
            min_participants=2,
            round_deadline_s=DEADLINE_S,
            wait_for_participants_s=60,
        )
        request = control_pb2.StartConsolidationRequest(spec=spec)
        jobs.append(chaos.control.StartConsolidation(request).job_id)
        return jobs[-1]

    sha, after = killed_and_resumed(chaos, consolidate, phase, after_round)
    listed = chaos.control.ListLedger(control_pb2.ListLedgerRequest()).entries
    status = {e.entry_id: e.status for e in listed}
    check(status[entries[-1]] == "consolidated", f"{entries[-1]} is {status[entries[-1]]}")
    events = list(chaos.control.WatchJob(control_pb2.WatchJobRequest(job_id=jobs[-1])))
    marks = sum(e.kind == "ledger_consolidated" for e in events)
    check(marks == 1, f"the consolidation marked the ledger {marks} times")
    return sha, after
