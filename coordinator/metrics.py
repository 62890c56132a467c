"""The coordinator's Prometheus metrics, created on an injected registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fused.common.rpc.metering import WireMetrics


class CoordinatorMetrics:
    """Everything on `registry` (served at /metrics), except each participant's wire bytes:
    those only with a `per_participant` registry, served on its own path (metrics_http.py)."""

    def __init__(
        self, registry: CollectorRegistry, per_participant: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry
        self.per_participant = per_participant
        self.wire = WireMetrics(registry, per_participant)
        self.rounds = Counter(
            "fused_rounds_completed", "Rounds aggregated", ["phase"], registry=registry
        )
        self.round_seconds = Histogram(
            "fused_round_duration_seconds",
            "Wall time of a round, from dispatch to aggregate",
            ["phase"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.jobs_finished = Counter(
            "fused_jobs_finished", "Jobs that ended", ["kind", "status"], registry=registry
        )
        self.rejected_results = Counter(
            "fused_rejected_results",
            "Task results or uploads refused as invalid",
            ["reason"],
            registry=registry,
        )
        self.refused_updates = Counter(
            "fused_refused_updates",
            "Updates refused once a round's results were in (norm checks), by reason",
            ["reason"],
            registry=registry,
        )
        self.capped_weights = Counter(
            "fused_capped_weights",
            "Results whose sample count was capped to the job's max share of a round",
            registry=registry,
        )
        self.rejected_calls = Counter(
            "fused_rejected_calls",
            "Calls refused before their handler ran (authentication, unknown fields)",
            ["code"],
            registry=registry,
        )
        self.marked_offline = Counter(
            "fused_participants_marked_offline",
            "Times a silent participant was marked offline and its open tasks failed",
            registry=registry,
        )
        self.last_round_bytes = Gauge(
            "fused_last_round_bytes",
            "Bytes both ways of the last completed round of each phase, all participants",
            ["phase"],
            registry=registry,
        )
        self.expected_round_bytes = Gauge(
            "fused_expected_round_bytes",
            "What a round of the phase should move: adapter values both ways plus a control "
            "allowance (set by unlearning jobs)",
            ["phase"],
            registry=registry,
        )
        self.job_accuracy = Gauge(
            "fused_job_accuracy",
            "RA: accuracy on the remaining test data at the job's latest evaluation",
            ["job_id"],
            registry=registry,
        )
        self.job_forget_accuracy = Gauge(
            "fused_job_forget_accuracy",
            "FA: accuracy on the forgotten set (or attack success) at the latest evaluation",
            ["job_id"],
            registry=registry,
        )
        self.participants_online = Gauge(
            "fused_participants_online",
            "Participants seen within the offline timeout",
            registry=registry,
        )
        self.tasks_in_flight = Gauge(
            "fused_tasks_in_flight", "Tasks handed out and not yet resolved", registry=registry
        )
        self.upload_refusals = Counter(
            "fused_upload_refusals",
            "Upload streams refused or cut by a limit (quota, streams, idle, slow, no_task, "
            "duplicate)",
            ["reason"],
            registry=registry,
        )

    def bind_gauges(self, online: Callable[[], int], in_flight: Callable[[], int]) -> None:
        """Gauges read live values at scrape time."""
        self.participants_online.set_function(lambda: float(online()))
        self.tasks_in_flight.set_function(lambda: float(in_flight()))
