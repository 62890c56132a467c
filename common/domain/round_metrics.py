"""What one committed round measured, as typed records.

Stored (SQLite, the control protocol's `metrics_json`, job events) as one flat JSON object whose
keys are fixed here and nowhere else: `to_dict` and `from_dict` are the one conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fused.common.domain.tasks import TaskOutcome, TaskTimings


class PayloadKind(StrEnum):
    """What a FedAvg round averages; the value is the metrics key naming the aggregate's blob."""

    WEIGHTS = "model"  # full model weights
    ADAPTER = "values"  # the values of a sparse adapter


@dataclass(frozen=True)
class ByteSummary:
    """Serialized bytes per participant in one round: up = to the coordinator."""

    up: dict[str, int] = field(default_factory=dict)
    down: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.up.values()) + sum(self.down.values())

    def to_dict(self) -> dict[str, Any]:
        return {"up": dict(self.up), "down": dict(self.down), "total": self.total}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteSummary:
        return cls(dict(data.get("up", {})), dict(data.get("down", {})))


@dataclass(frozen=True)
class AggregateSummary:
    """A FedAvg round: the mean training loss and the stored aggregate."""

    payload: PayloadKind
    blob: str  # sha256 of the aggregate (weights or adapter values)
    train_loss: float
    num_examples: int | None = None  # None in adapter rounds stored before it was recorded


@dataclass(frozen=True)
class EvalSummary:
    """Federated evaluation: the per-class counts of every participant, summed."""

    accuracy: float  # RA: on the remaining test data
    fa: float | None  # on the forgotten set; None without one
    forget_total: int
    loss: float
    num_examples: int
    correct: list[int]
    total: list[int]
    per_participant: dict[str, float]
    # membership-inference AUC on the forgotten set against the test data (common.ml.membership);
    # None without a forgotten set or loss histograms
    mia_auc: float | None = None


@dataclass(frozen=True)
class LayerScore:
    """One parameter tensor in the sensitivity ranking."""

    name: str
    distance: float  # sample-weighted mean L1 distance on the participants' data (CLI)
    numel: int
    selected: bool
    # the same on the forgotten data alone; None when the rule did not ask or no holder reported
    forget_distance: float | None = None
    score: float = 0.0  # what the selection rule ranked by (the CLI rule: distance)


@dataclass(frozen=True)
class Ranking:
    """A FUSED job's layer selection: the rule, why it chose as it did, the ranked tensors."""

    rule: str
    layers: list[LayerScore]
    note: str = ""  # e.g. a forget-aware rule that fell back to CLI, and why


@dataclass(frozen=True)
class LayerDistances:
    """What a training round recorded for a later layer ranking: per accepted participant,
    how far its update moved each adaptable tensor from the round's model (sum |after -
    before|, the CLI measure) and the samples it trained on. A FUSED job unlearning the
    model this round produced ranks from it instead of a sensitivity round on everyone."""

    distances: dict[str, dict[str, float]]  # participant -> tensor -> L1 distance
    examples: dict[str, int]  # participant -> samples trained on

    def to_dict(self) -> dict[str, Any]:
        return {"distances": self.distances, "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDistances:
        distances = {p: {t: float(d) for t, d in ds.items()} for p, ds in data["distances"].items()}
        return cls(distances, {p: int(n) for p, n in data["examples"].items()})


_EVAL_KEYS = ("accuracy", "fa", "forget_total", "loss", "num_examples", "correct", "total")


@dataclass(frozen=True)
class RoundMetrics:
    """One round's record: what every round has, plus the section of its kind."""

    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # participant -> why not counted
    bytes: ByteSummary | None = None
    aggregate: AggregateSummary | None = None
    evaluation: EvalSummary | None = None
    ranking: Ranking | None = None
    # participant -> where its accepted task's time went, as its agent measured it
    timings: dict[str, TaskTimings] = field(default_factory=dict)
    layer_distances: LayerDistances | None = None  # a training job's last round only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.seconds, "failures": dict(self.failures)}
        if self.bytes is not None:
            out["bytes"] = self.bytes.to_dict()
        if self.timings:
            out["timings"] = {pid: t.to_dict() for pid, t in sorted(self.timings.items())}
        if self.aggregate is not None:
            a = self.aggregate
            out.update({"train_loss": a.train_loss, a.payload.value: a.blob})
            if a.num_examples is not None:
                out["num_examples"] = a.num_examples
        if self.evaluation is not None:
            out.update(_eval_dict(self.evaluation))
        if self.ranking is not None:
            out["ranking"] = [_score_dict(s) for s in self.ranking.layers]
            out["selection"] = {"rule": self.ranking.rule, "note": self.ranking.note}
        if self.layer_distances is not None:
            out["layer_distances"] = self.layer_distances.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundMetrics:
        raw_bytes = data.get("bytes")
        return cls(
            seconds=float(data.get("seconds", 0.0)),
            failures=dict(data.get("failures", {})),
            bytes=ByteSummary.from_dict(raw_bytes) if isinstance(raw_bytes, dict) else None,
            aggregate=_aggregate(data),
            evaluation=_evaluation(data),
            ranking=_ranking(data),
            timings={p: TaskTimings.from_dict(t) for p, t in data.get("timings", {}).items()},
            layer_distances=(
                LayerDistances.from_dict(data["layer_distances"])
                if "layer_distances" in data
                else None
            ),
        )


def task_timings(outcomes: Mapping[str, TaskOutcome]) -> dict[str, TaskTimings]:
    """The timings each participant's outcome carried (agents that measured none are left
    out): what `finish_round` records of a round's accepted results."""
    return {pid: o.timings for pid, o in sorted(outcomes.items()) if o.timings is not None}


def _eval_dict(e: EvalSummary) -> dict[str, Any]:
    out = {key: getattr(e, key) for key in _EVAL_KEYS}
    out["per_participant"] = dict(e.per_participant)
    if e.mia_auc is not None:
        out["mia_auc"] = e.mia_auc
    return out


def _score_dict(s: LayerScore) -> dict[str, Any]:
    out = {"name": s.name, "distance": s.distance, "numel": s.numel, "selected": s.selected}
    if s.forget_distance is not None:
        out["forget_distance"] = s.forget_distance
    out["score"] = s.score
    return out


def _ranking(data: dict[str, Any]) -> Ranking | None:
    """Records written before selection rules existed ranked by CLI distance."""
    if "ranking" not in data:
        return None
    layers = [LayerScore(**{"score": s["distance"], **s}) for s in data["ranking"]]
    selection = data.get("selection", {"rule": "cli", "note": ""})
    return Ranking(selection["rule"], layers, selection["note"])


def _aggregate(data: dict[str, Any]) -> AggregateSummary | None:
    for payload in PayloadKind:
        if payload.value in data:
            n = data.get("num_examples")
            return AggregateSummary(payload, str(data[payload.value]), float(data["train_loss"]), n)
    return None


def _evaluation(data: dict[str, Any]) -> EvalSummary | None:
    if "accuracy" not in data:
        return None
    return EvalSummary(
        accuracy=float(data["accuracy"]),
        fa=None if data.get("fa") is None else float(data["fa"]),
        forget_total=int(data.get("forget_total", 0)),
        loss=float(data.get("loss", 0.0)),
        num_examples=int(data.get("num_examples", 0)),
        correct=list(data.get("correct", [])),
        total=list(data.get("total", [])),
        per_participant=dict(data.get("per_participant", {})),
        mia_auc=None if data.get("mia_auc") is None else float(data["mia_auc"]),
    )
