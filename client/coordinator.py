"""`Coordinator`: a typed client of the coordinator's control service.

Every call returns the project's records (`fused.client.records`), never protobuf messages,
and raises one `fused.client.errors` type per failure class with the coordinator's message.
Calls that only read, and those whose repetition changes nothing (revert, reapply), are
retried when the coordinator is unreachable (UNAVAILABLE), with exponential backoff; calls that
start something are not, since a lost answer may hide a started job. Event streams resume
after the last event they delivered, so `wait` follows a job across a coordinator restart.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from fused.client.errors import LocalError, Timeout, Unavailable, coordinator_error
from fused.client.records import Job, LayerScore, Participant, Ranking, Version
from fused.client.upload import upload_artifact
from fused.common.domain.ledger import ForgetRequest, LedgerEntry, Withdrawal
from fused.common.domain.records import JobEvent
from fused.common.domain.specs import ConsolidationSpec, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.rpc.channels import TlsFiles, create_channel
from fused.common.rpc.control_convert import (
    consolidation_spec_to_proto,
    event_from_proto,
    forget_request_from_proto,
    job_from_proto,
    ledger_from_proto,
    model_from_proto,
    participant_from_proto,
    unlearning_spec_to_proto,
)
from fused.common.rpc.task_convert import forget_to_proto
from fused.proto.v1 import control_pb2 as pb
from fused.proto.v1 import control_pb2_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str  # the version's digest, checked against what arrived
    size: int


class Coordinator:
    """A connection to one coordinator; use as a context manager or call `close`."""

    def __init__(
        self,
        address: str,
        *,
        tls: TlsFiles | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.25,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s  # per call (a job's wait has its own)
        self._retries = retries
        self._backoff_s = backoff_s
        self._channel = create_channel(address, tls, token)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ calls

    def _call(self, call: Callable[[], T], retry: bool) -> T:
        """`call`, retried on UNAVAILABLE when `retry`; grpc errors become the library's."""
        for attempt in range(self._retries + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                error = coordinator_error(exc)
                if not (retry and isinstance(error, Unavailable) and attempt < self._retries):
                    raise error from None
            time.sleep(self._backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, method: Callable[..., T], request: Any) -> T:
        return self._call(lambda: method(request, timeout=self.timeout_s), retry=True)

    def _write(self, method: Callable[..., T], request: Any) -> T:
        return self._call(lambda: method(request, timeout=self.timeout_s), retry=False)

    # ------------------------------------------------------------------ jobs

    def train(self, spec: TrainingSpec, init_file: Path | None = None) -> Job:
        """Start a training job. Unless it continues a stored version, its initial weights are
        built here from the workload (or read from `init_file`) and uploaded first."""
        from fused.client.initial_weights import start_training  # torch: only when training

        info = self._call(lambda: start_training(self._stub, spec, init_file), retry=False)
        return _job(info)

    def unlearn(self, spec: UnlearningSpec) -> Job:
        request = pb.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
        return _job(self._write(self._stub.StartUnlearning, request))

    def evaluate(
        self, version_id: str = "", forget: ForgetSpec | None = None, deadline_s: float = 300.0
    ) -> Job:
        """RA (and FA of `forget`, else of the request that made the version) of a version."""
        request = pb.StartEvaluationRequest(version_id=version_id, round_deadline_s=deadline_s)
        if forget is not None:
            request.forget.CopyFrom(forget_to_proto(forget))
        return _job(self._write(self._stub.StartEvaluation, request))

    def consolidate(self, spec: ConsolidationSpec | None = None) -> Job:
        """Retrain without the ledger's data, in the background (the defaults: the budget of
        the training that began the served chain)."""
        proto = consolidation_spec_to_proto(spec or ConsolidationSpec())
        request = pb.StartConsolidationRequest(spec=proto)
        return _job(self._write(self._stub.StartConsolidation, request))

    def job(self, job_id: str) -> Job:
        return _job(self._read(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)))

    def jobs(self) -> list[Job]:
        reply = self._read(self._stub.ListJobs, pb.ListJobsRequest())
        return [_job(info) for info in reply.jobs]

    def cancel(self, job_id: str) -> Job:
        return _job(self._write(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id)))

    def layers(self, job_id: str) -> Ranking:
        """The job's layer selection: its rule, and every tensor's scores."""
        reply = self._read(self._stub.GetLayers, pb.GetJobRequest(job_id=job_id))
        layers = [
            LayerScore(
                s.name,
                s.distance,
                s.numel,
                s.selected,
                s.forget_distance if s.HasField("forget_distance") else None,
                s.score,
            )
            for s in reply.layers
        ]
        return Ranking(reply.selection, layers, reply.note)

    def events(
        self, job_id: str, after_seq: int = 0, timeout_s: float | None = None
    ) -> Iterator[JobEvent]:
        """The job's events after `after_seq`, then new ones as they happen, until it ends.
        A dropped stream is opened again after the last event delivered."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seq = after_seq
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            request = pb.WatchJobRequest(job_id=job_id, after_seq=seq)
            try:
                for message in self._stub.WatchJob(request, timeout=left):
                    event = event_from_proto(message)
                    seq = event.seq
                    yield event
                return
            except grpc.RpcError as exc:
                error = coordinator_error(exc)
                if isinstance(error, Timeout):
                    why = f"job {job_id} did not end within {timeout_s} s"
                    raise Timeout(error.code, why) from None
                if not isinstance(error, Unavailable):
                    raise error from None
                self._call(lambda: self._stub.GetJob(pb.GetJobRequest(job_id=job_id)), True)

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_event: Callable[[JobEvent], object] | None = None,
    ) -> Job:
        """Follow the job until it ends (each event to `on_event`); returns it, completed or
        failed. Raises Timeout after `timeout_s`."""
        for event in self.events(job_id, timeout_s=timeout_s):
            if on_event is not None:
                on_event(event)
        return self.job(job_id)

    # ------------------------------------------------------------------ versions

    def versions(self) -> list[Version]:
        reply = self._read(self._stub.ListModels, pb.ListModelsRequest())
        return [_version(m) for m in reply.models]

    def active_version(self) -> Version | None:
        return next((v for v in self.versions() if v.active), None)

    def revert(self, version_id: str) -> Version:
        """Serve the version's parent again (exact)."""
        return _version(self._read(self._stub.Revert, pb.VersionRequest(version_id=version_id)))

    def reapply(self, version_id: str) -> Version:
        """Serve the version (exact)."""
        request = pb.VersionRequest(version_id=version_id)
        return _version(self._read(self._stub.Reapply, request))

    def drop_versions(self, version_ids: Sequence[str]) -> list[str]:
        request = pb.DropVersionsRequest(version_ids=list(version_ids))
        return list(self._write(self._stub.DropVersions, request).dropped)

    def export(self, out: Path, version_id: str = "") -> Exported:
        """Write a version's weights (default: the served one) to `out` as safetensors; the
        file appears only once its SHA-256 matches the version's digest."""
        request = pb.ExportModelRequest(version_id=version_id)
        return self._call(lambda: _download(self._stub.ExportModel(request), out), retry=True)

    def export_adapter(self, out: Path, version_id: str) -> Exported:
        """Write an adapter version's unlearning as a portable adapter file to `out`
        (docs/ADAPTER_FILE.md; apply it with `fused.client.adapters.apply_adapter`)."""
        request = pb.VersionRequest(version_id=version_id)
        return self._call(lambda: _download(self._stub.ExportAdapter(request), out), retry=True)

    def receipt(self, version_id: str) -> bytes:
        """The signed receipt of the unlearning job that made `version_id` (its file's bytes;
        check it with `fused.client.receipts.verify_receipt_file`)."""
        request = pb.VersionRequest(version_id=version_id)
        return bytes(self._read(self._stub.GetReceipt, request).receipt)

    def receipt_key(self) -> tuple[bytes, str]:
        """The coordinator's receipt-signing public key: (PEM, key id)."""
        reply = self._read(self._stub.GetReceiptKey, pb.ReceiptKeyRequest())
        return bytes(reply.public_key_pem), reply.key_id

    # ------------------------------------------------------------------ ledger

    def ledger(self) -> list[LedgerEntry]:
        reply = self._read(self._stub.ListLedger, pb.ListLedgerRequest())
        return [ledger_from_proto(e) for e in reply.entries]

    def withdraw(self, entry_id: str, keep_version: bool = False) -> Withdrawal:
        """Take a request back; unless `keep_version`, the served model comes to forget
        exactly the remaining requests (a switch, or a job: `Withdrawal.job_id`)."""
        request = pb.WithdrawalRequest(entry_id=entry_id, keep_version=keep_version)
        reply = self._write(self._stub.WithdrawRequest, request)
        entry = ledger_from_proto(reply.entry)
        return Withdrawal(entry, reply.version_id, reply.job_id, reply.message)

    def forget_requests(self) -> list[ForgetRequest]:
        """Participants' own forgetting requests, oldest first."""
        reply = self._read(self._stub.ListForgetRequests, pb.ListForgetRequestsRequest())
        return [forget_request_from_proto(r) for r in reply.requests]

    def approve(self, request_id: str) -> ForgetRequest:
        """Approve a pending request: its unlearning job starts (`ForgetRequest.job_id`)."""
        decision = pb.ForgetDecision(request_id=request_id, approve=True)
        return forget_request_from_proto(self._write(self._stub.DecideForgetRequest, decision))

    def reject(self, request_id: str, reason: str = "") -> ForgetRequest:
        decision = pb.ForgetDecision(request_id=request_id, approve=False, reason=reason)
        return forget_request_from_proto(self._write(self._stub.DecideForgetRequest, decision))

    # ------------------------------------------------------------------ participants

    def participants(self) -> list[Participant]:
        reply = self._read(self._stub.ListParticipants, pb.ListParticipantsRequest())
        return [_participant(p) for p in reply.participants]

    def remove_participant(self, participant_id: str) -> Participant:
        request = pb.ParticipantRequest(participant_id=participant_id)
        return _participant(self._write(self._stub.RemoveParticipant, request))

    def block_participant(self, participant_id: str, reason: str = "") -> Participant:
        request = pb.BlockParticipantRequest(participant_id=participant_id, reason=reason)
        return _participant(self._read(self._stub.BlockParticipant, request))

    def unblock_participant(self, participant_id: str) -> Participant:
        request = pb.ParticipantRequest(participant_id=participant_id)
        return _participant(self._write(self._stub.UnblockParticipant, request))

    def upload_artifact(self, data: bytes) -> str:
        """Store `data` (a training job's initial weights); returns its SHA-256."""
        return self._call(lambda: upload_artifact(self._stub, data, self.timeout_s), retry=True)


def _job(info: pb.JobInfo) -> Job:
    record, rounds = job_from_proto(info)
    return Job(record, tuple(rounds))


def _version(info: pb.ModelVersionInfo) -> Version:
    record, active = model_from_proto(info)
    return Version(record, active)


def _participant(info: pb.ParticipantInfo) -> Participant:
    record, online = participant_from_proto(info)
    return Participant(record, online, info.blocked, info.blocked_reason)


def _download(chunks: Iterable[Any], out: Path) -> Exported:
    tmp = out.with_name(out.name + ".part")
    digest, size, hasher = "", 0, hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            for chunk in chunks:
                digest = digest or chunk.blob_id
                f.write(chunk.data)
                hasher.update(chunk.data)
                size += len(chunk.data)
        if hasher.hexdigest() != digest:  # each stream names its content's sha256
            raise LocalError(f"export is damaged: sha256 {hasher.hexdigest()}, expected {digest}")
        tmp.replace(out)
    except OSError as exc:
        raise LocalError(f"cannot write {out}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)  # a failed export leaves nothing behind
    return Exported(out, digest, size)
