"""Size and render time of the coordinator's Prometheus endpoints at 1,000 and 10,000
participants, with and without per-participant metrics.

    python -m bench.metrics_size [--participants 1000 10000] [--repeat 3] [--no-before]

No processes and no network: the coordinator's metrics are created on fresh registries and
each simulated participant's traffic is recorded as the coordinator's interceptor records it
(one training job, one evaluation and one FUSED unlearning job: each method and phase such a
participant uses, both directions). The endpoints are then rendered with
`prometheus_client.generate_latest`, which is what a scrape costs the coordinator (it holds
the GIL, so the event loop waits). "before" is the earlier layout, with a `participant`
label on `fused_wire_bytes_total` and `fused_wire_messages_total` on /metrics, for
comparison. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from fused.common.rpc.metering import disable_created_series
from fused.coordinator.metrics import CoordinatorMetrics

# (method, phase) of the calls one participant makes in a training job with evaluation and a
# FUSED unlearning job; each is counted in both directions.
TRAFFIC = (
    *(("Register", "none"), ("Heartbeat", "none"), ("PullTask", "none")),
    *(("DownloadBlob", "train"), ("UploadBlob", "train"), ("PushResult", "train")),
    *(("DownloadBlob", "evaluate"), ("PushResult", "evaluate")),
    *(("DownloadBlob", "sensitivity"), ("PushResult", "sensitivity")),
    *(("DownloadBlob", "adapter"), ("UploadBlob", "adapter"), ("PushResult", "adapter")),
)
DIRECTIONS = ("sent", "received")


def render(registry: CollectorRegistry, repeat: int) -> dict[str, Any]:
    """Bytes of one scrape and the median seconds of `repeat` renderings."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        text = generate_latest(registry)
        seconds.append(time.perf_counter() - started)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return {"bytes": len(text), "series": series, "seconds": round(statistics.median(seconds), 4)}


def simulate(participants: int, per_participant: bool, repeat: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    extra = CollectorRegistry() if per_participant else None
    metrics = CoordinatorMetrics(registry, extra)
    for i in range(participants):
        for method, phase in TRAFFIC:
            for direction in DIRECTIONS:
                metrics.wire.record(method, direction, phase, f"p{i}", 1000 + i)
    out = {"/metrics": render(registry, repeat)}
    if extra is not None:
        out["/metrics/participants"] = render(extra, repeat)
    return out


def before(participants: int, repeat: int) -> dict[str, Any]:
    """The earlier /metrics: the wire counters labelled by participant, on the main registry."""
    registry = CollectorRegistry()
    labels = ["method", "direction", "phase", "participant"]
    wire = [
        Counter(name, name, labels, registry=registry)
        for name in ("fused_wire_bytes", "fused_wire_messages")
    ]
    for i in range(participants):
        for method, phase in TRAFFIC:
            for direction in DIRECTIONS:
                for counter in wire:
                    counter.labels(method, direction, phase, f"p{i}").inc(1000 + i)
    return {"/metrics (wire counters only)": render(registry, repeat)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participants", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-before", action="store_true", help="skip the earlier layout (slow at 10,000)"
    )
    args = parser.parse_args(argv)
    disable_created_series()  # as the daemons do at start
    results: dict[str, Any] = {"calls_per_participant": len(TRAFFIC) * len(DIRECTIONS)}
    for n in args.participants:
        results[str(n)] = {
            "aggregate_only": simulate(n, False, args.repeat),
            "per_participant_metrics": simulate(n, True, args.repeat),
            **({} if args.no_before else {"before": before(n, args.repeat)}),
        }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
