"""Counting of serialized message bytes, per RPC method, direction and phase (and, where
asked for, per participant).

Counting happens where bytes are produced and consumed: a server interceptor wraps each
method's (de)serializer, and a channel wrapper does the same for clients. The numbers are
therefore exactly the serialized sizes of the messages exchanged. The client side is
`common/rpc/client_metering.py`.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import grpc.aio
import prometheus_client
from prometheus_client import CollectorRegistry, Counter

# Metadata keys a participant attaches so both ends can label bytes by job phase.
MD_PARTICIPANT = "fused-participant"
MD_JOB = "fused-job"
MD_PHASE = "fused-phase"
MD_ROUND = "fused-round"

NO_PHASE = "none"
KNOWN_PHASES = frozenset(
    {NO_PHASE, "train", "evaluate", "sensitivity", "adapter", "retrain", "finetune"}
)
SENT = "sent"  # the direction of what the counting side sends
NO_PARTICIPANT = "-"  # the label of calls made by no participant (operators, refused calls)

Serializer = Callable[[Any], Any] | None


@dataclass(frozen=True)
class CallLabels:
    """How one call's bytes are counted, decided once per call: its labels on the wire
    metrics, and `charge`, which also gets each count (the coordinator's job accounting)."""

    participant: str = NO_PARTICIPANT
    phase: str = NO_PHASE
    charge: Callable[[str, int], None] | None = None  # (direction, bytes)


Resolve = Callable[[], CallLabels | None]  # None: who is calling is not known yet
Metadata = Mapping[str, str]
# (method, metadata) at the start of a call -> how to label it once the caller is known
Labeller = Callable[[str, Mapping[str, str]], Resolve]


def disable_created_series() -> None:
    """Drop counters' *_created series, process-wide: they double the text of labelled
    counters (per-participant ones: 2.2 s -> 1.3 s to render 1,000 participants, holding the
    GIL), and nothing graphs them. The daemons call this at start."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class WireMetrics:
    """Byte and message counters, created on an injected registry.

    `fused_wire_bytes_total` and `fused_wire_messages_total` count by method, direction and
    phase: a fixed number of series at any number of participants. With a `per_participant`
    registry, `fused_participant_wire_bytes_total` also counts each participant's bytes by
    direction and phase there (the coordinator serves it on its own path, see
    coordinator/metrics_http.py); without one the participant of a count is not kept.
    """

    def __init__(
        self, registry: CollectorRegistry, per_participant: CollectorRegistry | None = None
    ) -> None:
        labels = ["method", "direction", "phase"]
        self.bytes = Counter(
            "fused_wire_bytes",
            "Serialized protobuf message bytes sent or received",
            labels,
            registry=registry,
        )
        self.messages = Counter(
            "fused_wire_messages",
            "Protobuf messages sent or received",
            labels,
            registry=registry,
        )
        self.participant_bytes = (
            None
            if per_participant is None
            else Counter(
                "fused_participant_wire_bytes",
                "Serialized protobuf message bytes sent or received, per participant",
                ["direction", "phase", "participant"],
                registry=per_participant,
            )
        )

    def record(
        self, method: str, direction: str, phase: str, participant: str, n: int, messages: int = 1
    ) -> None:
        phase = phase if phase in KNOWN_PHASES else "other"
        self.bytes.labels(method, direction, phase).inc(n)
        self.messages.labels(method, direction, phase).inc(messages)
        if self.participant_bytes is not None:
            self.participant_bytes.labels(direction, phase, participant).inc(n)


def short_method(full: str) -> str:
    """ "/fused.v1.ParticipantService/Register" -> "Register"."""
    return full.rsplit("/", 1)[-1]


def counting(fn: Serializer, count: Callable[[int], None], outgoing: bool) -> Serializer:
    if fn is None:
        return None
    if outgoing:

        def serialize(message: Any) -> Any:
            data = fn(message)
            count(len(data))
            return data

        return serialize

    def deserialize(data: bytes) -> Any:
        count(len(data))
        return fn(data)

    return deserialize


class _CallTally:
    """One call's counts. Labels may depend on who is calling, which is known only once the
    handler has started (authentication runs first): counts made before that wait here,
    summed, and go out under the labels once known. A call that ends without any (refused
    before its handler) counts under CallLabels()."""

    def __init__(self, metrics: WireMetrics, method: str, labeller: Labeller, md: Metadata):
        self._metrics = metrics
        self._method = method
        self._labeller = labeller
        self._resolve = labeller(method, md)
        self._labels: CallLabels | None = None
        self._response: Resolve | None = None  # set by respond_for: the reply's own task
        self._waiting: dict[str, list[int]] = {}  # direction -> [bytes, messages]

    def respond_for(self, md: Metadata) -> None:
        """Label the response as if a call had named `md`'s task (see `respond_for`)."""
        self._response = self._labeller(self._method, md)

    def count(self, direction: str, n: int) -> None:
        response = self._response() if direction == SENT and self._response else None
        if response is not None:
            self._add(response, direction, n, 1)
            return
        labels = self._labels or self._settle(self._resolve())
        if labels is None:
            held = self._waiting.setdefault(direction, [0, 0])
            held[0] += n
            held[1] += 1
        else:
            self._add(labels, direction, n, 1)

    def labels(self) -> CallLabels:
        """The call's labels as they stand now (CallLabels() while the caller is unknown)."""
        return self._labels or self._settle(self._resolve()) or CallLabels()

    def caller_known(self) -> None:
        """Label what waits now, if the labels can be resolved (see `caller_known`)."""
        if self._labels is None:
            self._settle(self._resolve())

    def finish(self) -> None:
        """The handler is done: label the call now, whoever the caller turned out to be."""
        if self._labels is None:
            self._settle(self._resolve() or CallLabels())

    def _settle(self, labels: CallLabels | None) -> CallLabels | None:
        if labels is not None:
            self._labels = labels
            for direction, (n, messages) in self._waiting.items():
                self._add(labels, direction, n, messages)
            self._waiting.clear()
        return labels

    def _add(self, labels: CallLabels, direction: str, n: int, messages: int) -> None:
        self._metrics.record(self._method, direction, labels.phase, labels.participant, n, messages)
        if labels.charge is not None:
            labels.charge(direction, n)


_current_call: contextvars.ContextVar[_CallTally | None] = contextvars.ContextVar(
    "fused_call_tally", default=None
)


def caller_known() -> None:
    """Authentication calls this once it knows who is calling, so that the call's counts so
    far (its request) are labelled now: a long poll's request counts when it arrives, not
    when the poll ends."""
    tally = _current_call.get()
    if tally is not None:
        tally.caller_known()


def current_labels() -> CallLabels:
    """How the current call's bytes are counted: bytes it arranges to move elsewhere (a bulk
    transfer it opens) are counted alike."""
    tally = _current_call.get()
    return tally.labels() if tally is not None else CallLabels()


def respond_for(md: Metadata) -> None:
    """The current call's response belongs to the task `md` names (participant, job, phase,
    round), not to the task its request named: a reply that hands out a task, with the
    artifacts it carries inline, is charged to that task's round."""
    tally = _current_call.get()
    if tally is not None:
        tally.respond_for(md)


def task_metadata(participant: str, job_id: str, phase: str, round_number: int) -> Metadata:
    """The call metadata that names one task of a participant."""
    return {
        MD_PARTICIPANT: participant,
        MD_JOB: job_id,
        MD_PHASE: phase,
        MD_ROUND: str(round_number),
    }


def _finishing(behavior: Any, tally: _CallTally) -> Any:
    """`behavior` (a handler, async as ours all are) that makes the tally the call's own and
    finishes it when it ends; a unary response is serialized after that, and counted under
    the labels then known."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            _current_call.set(tally)  # this call's task and context only
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                tally.finish()

        return stream
    if not inspect.iscoroutinefunction(behavior):
        tally.finish()  # a synchronous handler: label the call now, as nobody
        return behavior

    async def unary(request: Any, context: Any) -> Any:
        _current_call.set(tally)
        try:
            return await behavior(request, context)
        finally:
            tally.finish()

    return unary


class CountingServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every request and response of a grpc.aio server.

    `labeller` is asked at the start of each call how to label it; what it answers is
    resolved once the caller is known (see _CallTally). The coordinator's labels come from
    the authenticated caller and its tasks (coordinator/accounting.py), so what a call's
    metadata claims never becomes a label or an accounting key.
    """

    def __init__(self, metrics: WireMetrics, labeller: Labeller) -> None:
        self._metrics = metrics
        self._labeller = labeller

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: Any = await continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None  # type: ignore[return-value]  # grpc's stubs omit the None case
        md = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        method = short_method(details.method)
        tally = _CallTally(self._metrics, method, self._labeller, md)
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(
            **{kind: _finishing(getattr(handler, kind), tally)},
            request_deserializer=counting(
                handler.request_deserializer, partial(tally.count, "received"), False
            ),
            response_serializer=counting(
                handler.response_serializer, partial(tally.count, SENT), True
            ),
        )
        return replaced


class PreSerializedResponses(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Lets handlers yield responses already serialized (bytes), for large streams."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: Any = await continuation(details)
        if handler is None or handler.response_serializer is None:
            return handler  # type: ignore[no-any-return]
        serialize = handler.response_serializer

        def pass_bytes(message: Any) -> Any:
            return message if isinstance(message, bytes) else serialize(message)

        replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(response_serializer=pass_bytes)
        return replaced
