"""The client side of byte counting: `CountingChannel`, a blocking channel whose generated
stubs count what they send and receive, labelled as the coordinator labels the same calls
(`common/rpc/metering.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from fused.common.rpc.metering import (
    NO_PHASE,
    SENT,
    Serializer,
    WireMetrics,
    counting,
    short_method,
)
from fused.proto.v1 import participant_pb2


def _handed_phase(message: Any) -> str | None:
    """The phase of the task a reply hands out: PullTaskResponse.task, or the next task a
    PushResultResponse brings."""
    if isinstance(message, participant_pb2.PushResultResponse):
        message = message.next
    if isinstance(message, participant_pb2.PullTaskResponse) and message.HasField("task"):
        return message.task.phase
    return None


def _counting_factory(kind: str) -> Callable[..., Any]:
    """CountingChannel's method `kind`: the inner channel's, with counting (de)serializers."""

    def make(
        self: CountingChannel,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Serializer = None,
        _registered_method: bool = False,
    ) -> Any:
        kw = self._wrap(method, request_serializer, response_deserializer)
        inner: Any = self._inner  # grpc's stubs lack the private flag generated code passes
        return getattr(inner, kind)(method, **kw, _registered_method=_registered_method)

    make.__name__ = make.__qualname__ = kind
    return make


class CountingChannel(grpc.Channel):
    """Wraps a blocking grpc.Channel so generated stubs built on it count their bytes.

    Labels are fixed per wrapper, not per thread: gRPC (de)serializes streamed messages on
    its own threads. `with_phase` gives a view that labels its calls with another phase.
    """

    def __init__(
        self, inner: grpc.Channel, metrics: WireMetrics, participant: str, phase: str = NO_PHASE
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._participant = participant
        self._phase = phase

    def with_phase(self, phase: str) -> CountingChannel:
        """A view on the same connection whose calls count under `phase`."""
        return CountingChannel(self._inner, self._metrics, self._participant, phase)

    def _count(self, method: str, direction: str) -> Callable[[int], None]:
        name = short_method(method)

        def count(n: int) -> None:
            self._metrics.record(name, direction, self._phase, self._participant, n)

        return count

    def _wrap(self, method: str, ser: Serializer, deser: Serializer) -> dict[str, Any]:
        return {
            "request_serializer": counting(ser, self._count(method, SENT), True),
            "response_deserializer": self._counting_response(method, deser),
        }

    def _counting_response(self, method: str, deser: Serializer) -> Serializer:
        """Counts a response under the phase of the task it hands out, if it hands out one
        (as the coordinator charges it), else under this view's phase."""
        if deser is None:
            return None
        name = short_method(method)

        def deserialize(data: bytes) -> Any:
            phase = self._phase
            try:
                message = deser(data)
                phase = _handed_phase(message) or phase
                return message
            finally:
                self._metrics.record(name, "received", phase, self._participant, len(data))

        return deserialize

    # The four factories of multi-callables, alike but for which one of the inner channel's
    # they call; see _counting_factory.
    unary_unary = _counting_factory("unary_unary")
    unary_stream = _counting_factory("unary_stream")
    stream_unary = _counting_factory("stream_unary")
    stream_stream = _counting_factory("stream_stream")

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._inner.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._inner.unsubscribe(callback)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> CountingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
