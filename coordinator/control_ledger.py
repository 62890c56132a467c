"""The control service's calls about requests and what they produced: the forget ledger,
withdrawal, consolidation, participants' own requests and signed receipts. A mixin of
`ControlServicer` (control_service.py), which holds the state these calls use."""

from __future__ import annotations

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fused.common.codecs.receipts import key_id, public_pem
from fused.common.domain.records import JobKind, ModelVersion
from fused.common.rpc.control_convert import (
    consolidation_spec_from_proto,
    forget_request_to_proto,
    job_to_proto,
    ledger_to_proto,
)
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.forget_requests import ForgetRequests
from fused.coordinator.receipts import receipt
from fused.coordinator.rpc_errors import Context, answers, caller_id
from fused.coordinator.state import StateStore
from fused.coordinator.withdrawal import withdraw
from fused.proto.v1 import control_pb2

MAX_REASON = 200  # characters of a rejection's reason


class LedgerCalls:
    store: StateStore
    jobs: JobManager
    requests: ForgetRequests | None
    receipt_key: Ed25519PrivateKey | None

    def _version(self, version_id: str) -> ModelVersion:
        raise NotImplementedError  # ControlServicer's

    async def ListLedger(
        self, request: control_pb2.ListLedgerRequest, context: Context
    ) -> control_pb2.ListLedgerResponse:
        entries = self.store.list_ledger()
        return control_pb2.ListLedgerResponse(entries=[ledger_to_proto(e) for e in entries])

    @answers()
    async def WithdrawRequest(
        self, request: control_pb2.WithdrawalRequest, context: Context
    ) -> control_pb2.WithdrawalResponse:
        done = withdraw(self.store, self.jobs, request.entry_id, request.keep_version, caller_id())
        return control_pb2.WithdrawalResponse(
            entry=ledger_to_proto(done.entry),
            version_id=done.version_id,
            job_id=done.job_id,
            message=done.message,
        )

    @answers(rejected="invalid consolidation spec: ")
    async def StartConsolidation(
        self, request: control_pb2.StartConsolidationRequest, context: Context
    ) -> control_pb2.JobInfo:
        spec = consolidation_spec_from_proto(request.spec)
        return job_to_proto(self.jobs.start(JobKind.CONSOLIDATE, spec, caller_id()))

    @answers()
    async def ListForgetRequests(
        self, request: control_pb2.ListForgetRequestsRequest, context: Context
    ) -> control_pb2.ListForgetRequestsResponse:
        found = self.store.list_forget_requests()
        return control_pb2.ListForgetRequestsResponse(
            requests=[forget_request_to_proto(r) for r in found]
        )

    @answers(rejected="cannot decide: ")
    async def DecideForgetRequest(
        self, request: control_pb2.ForgetDecision, context: Context
    ) -> control_pb2.ForgetRequestInfo:
        if self.requests is None:
            raise RequestRefused(grpc.StatusCode.UNIMPLEMENTED, "no request handling here")
        operator = caller_id() or "operator"
        if request.approve:
            decided = self.requests.approve(request.request_id, operator)
        else:
            decided = self.requests.reject(request.request_id, operator, request.reason)
        return forget_request_to_proto(decided)

    @answers()
    async def GetReceipt(
        self, request: control_pb2.VersionRequest, context: Context
    ) -> control_pb2.ReceiptResponse:
        version = self._version(request.version_id)
        return control_pb2.ReceiptResponse(receipt=receipt(self.store, version, self._signer()))

    @answers()
    async def GetReceiptKey(
        self, request: control_pb2.ReceiptKeyRequest, context: Context
    ) -> control_pb2.ReceiptKeyResponse:
        public = self._signer().public_key()
        return control_pb2.ReceiptKeyResponse(
            public_key_pem=public_pem(public), key_id=key_id(public)
        )

    def _signer(self) -> Ed25519PrivateKey:
        if self.receipt_key is None:
            raise RequestRefused(
                grpc.StatusCode.FAILED_PRECONDITION, "this coordinator signs no receipts"
            )
        return self.receipt_key
