"""Job specifications as the coordinator validates and stores them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig


class SpecError(ValueError):
    """A job specification is invalid; the message says which field and why."""


@dataclass(frozen=True)
class TrainingSpec:
    model: str = ""  # workload name; "" = the one most online participants serve
    rounds: int = 10
    train: TrainConfig = field(default_factory=TrainConfig)
    participants_per_round: int = 0  # 0 = every online participant
    min_participants: int = 1
    round_deadline_s: float = 300.0
    seed: int = 0
    init_version: str = ""  # "" = fresh initialisation
    wait_for_participants_s: float = 60.0
    evaluate_each_round: bool = True
    policy: AggregationPolicy = field(default_factory=AggregationPolicy)
    init_weights: str = ""  # artifact digest of the initial weights when init_version is ""

    def check_start(self) -> None:
        """Raise SpecError unless the job has exactly one starting point."""
        if bool(self.init_version) == bool(self.init_weights):
            raise SpecError(
                "a training job starts from exactly one of init_version (a stored version) or "
                "init_weights (uploaded weights; fusedctl train builds them from the workload)"
            )

    def validate(self) -> None:
        try:
            self.train.validate()
        except ValueError as exc:
            raise SpecError(f"train: {exc}") from exc
        _check_policy(self.policy)
        checks = [
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (
                self.min_participants >= 1,
                f"min_participants must be >= 1, got {self.min_participants}",
            ),
            (self.participants_per_round >= 0, "participants_per_round must be >= 0"),
            (
                self.participants_per_round == 0
                or self.participants_per_round >= self.min_participants,
                "participants_per_round must be 0 (all) or >= min_participants",
            ),
            *_schedule_checks(self),
        ]
        _check(checks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSpec:
        values = dict(data)
        values["train"] = TrainConfig(**values.get("train", {}))
        values["policy"] = AggregationPolicy.from_dict(values.get("policy"))
        return cls(**values)


UPLOAD_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_SELECTION = "combined"
DEFAULT_STOP_PATIENCE = 3
DEFAULT_UNLEARNING_ROUNDS = 20
# An unlearning job without its own optimiser settings takes the training's, with the learning
# rate doubled: a sparse adapter moves few parameters, and at the training's rate the class
# request still forgot after the 20-round cap (docs/RESULTS.md, "One configuration").
INHERITED_LR_FACTOR = 2.0
DEFAULT_STOP_MIN_DELTA = 0.1


@dataclass(frozen=True)
class MethodConfig:
    """An unlearning method's own knobs; the method's name selects the class."""

    name: ClassVar[str]

    def validate(self) -> None:
        """Raise SpecError for settings the method cannot run with."""

    def to_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FusedConfig(MethodConfig):
    name: ClassVar[str] = "fused"
    top_k: int = 3  # adapt the K highest-scoring parameter tensors ...
    layers: tuple[str, ...] = ()  # ... or exactly these
    density: float = 0.05  # adapter mask density rho
    upload_dtype: str = "float32"  # float32, float16 or bfloat16 adapter uploads
    # how the K tensors are chosen: a rule of fused.coordinator.methods.selection (the
    # coordinator checks the name when the job starts)
    selection: str = DEFAULT_SELECTION

    def validate(self) -> None:
        checks = [
            (self.top_k >= 1 or bool(self.layers), "top_k must be >= 1 (or give layers)"),
            (0 < self.density <= 1, f"density must be in (0, 1], got {self.density}"),
            (
                self.upload_dtype in UPLOAD_DTYPES,
                f"upload_dtype must be one of {', '.join(UPLOAD_DTYPES)}",
            ),
        ]
        _check(checks)


@dataclass(frozen=True)
class RetrainConfig(MethodConfig):
    name: ClassVar[str] = "retrain"  # FedAvg from a fresh initialisation: no knobs of its own


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    name: ClassVar[str] = "finetune"  # FedAvg of the full model from the base: no knobs


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    c.name: c for c in (FusedConfig, RetrainConfig, FinetuneConfig)
}


def method_config(name: str, fields: Mapping[str, Any]) -> MethodConfig:
    """Method `name`'s config from flat fields (a request, a stored spec); fields that belong
    to other methods are ignored."""
    cls = METHOD_CONFIGS.get(name)
    if cls is None:
        raise SpecError(f"method must be one of {', '.join(METHOD_CONFIGS)}")
    own = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in fields.items() if k in own}
    if "layers" in values:
        values["layers"] = tuple(values["layers"])
    return cls(**values)


@dataclass(frozen=True)
class UnlearningSpec:
    forget: ForgetSpec
    config: MethodConfig = field(default_factory=FusedConfig)  # the method and its knobs
    base_version: str = ""  # "" = the active version
    rounds: int = DEFAULT_UNLEARNING_ROUNDS  # the cap, when a stopping rule is on
    # None = the local optimiser settings of the training that began the base's chain: a
    # federation's own learning rate and epochs (resolved when the job starts)
    train: TrainConfig | None = None
    min_participants: int = 1
    round_deadline_s: float = 300.0
    wait_for_participants_s: float = 60.0
    seed: int = 0
    evaluate_each_round: bool = True
    policy: AggregationPolicy = field(default_factory=AggregationPolicy)
    # A withdrawal's rebuild: the ledger entries this job applies again on `base_version`
    # (`forget` is the last of them); it records no new entry. () = a new request.
    replays: tuple[str, ...] = ()
    # Stop by measurement: once the forgotten set's federated FA has not fallen below
    # (1 - stop_min_delta) x its lowest so far for `stop_patience` rounds, or is 0; `rounds`
    # is then the cap. 0, or no evaluation each round, = run every round.
    stop_patience: int = DEFAULT_STOP_PATIENCE
    stop_min_delta: float = DEFAULT_STOP_MIN_DELTA

    @property
    def method(self) -> str:
        return self.config.name

    def validate(self) -> None:
        try:
            if self.train is not None:
                self.train.validate()
            self.forget.validate()
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        self.config.validate()
        _check_policy(self.policy)
        checks = [
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.min_participants >= 1, "min_participants must be >= 1"),
            (self.stop_patience >= 0, f"stop_patience must be >= 0, got {self.stop_patience}"),
            (
                0 <= self.stop_min_delta < 1,  # a fraction of the lowest FA
                f"stop_min_delta must be in [0, 1), got {self.stop_min_delta}",
            ),
            *_schedule_checks(self),
        ]
        _check(checks)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: flat, the method's own fields beside the common ones."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del common["config"]
        train = dataclasses.asdict(self.train) if self.train is not None else None
        common.update(forget=dataclasses.asdict(self.forget), train=train)
        common["policy"] = self.policy.to_dict()
        common["replays"] = list(self.replays)
        return {**common, "method": self.method, **self.config.to_fields()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnlearningSpec:
        # a spec stored before these fields existed ran every round and ranked by CLI
        data = {"stop_patience": 0, "selection": "cli", **data}
        nested = {"forget", "config", "train", "policy", "replays"}
        own = {f.name for f in dataclasses.fields(cls)} - nested
        return cls(
            forget=ForgetSpec.from_dict(data["forget"]),
            config=method_config(str(data.get("method", "fused")), data),
            train=TrainConfig(**data["train"]) if data.get("train") is not None else None,
            policy=AggregationPolicy.from_dict(data.get("policy")),
            replays=tuple(str(e) for e in data.get("replays", ())),
            **{k: v for k, v in data.items() if k in own},
        )


@dataclass(frozen=True)
class ConsolidationSpec:
    """A retrain from the stored initial weights on the data the ledger allows, replacing a
    chain of unlearning versions (`fusedctl consolidate`)."""

    base_version: str = ""  # the chain it replaces; "" = the active version
    rounds: int = 0  # 0 = the budget (rounds, train, seed) of the training that began the chain
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    min_participants: int = 1
    round_deadline_s: float = 300.0
    wait_for_participants_s: float = 60.0
    policy: AggregationPolicy = field(default_factory=AggregationPolicy)

    def validate(self) -> None:
        if self.rounds:
            try:
                self.train.validate()
            except ValueError as exc:
                raise SpecError(f"train: {exc}") from exc
        _check_policy(self.policy)
        checks = [
            (self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}"),
            (self.min_participants >= 1, "min_participants must be >= 1"),
            *_schedule_checks(self),
        ]
        _check(checks)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "policy": self.policy.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsolidationSpec:
        own = {f.name for f in dataclasses.fields(cls)} - {"train", "policy"}
        return cls(
            train=TrainConfig(**data.get("train", {})),
            policy=AggregationPolicy.from_dict(data.get("policy")),
            **{k: v for k, v in data.items() if k in own},
        )


class _Scheduled(Protocol):
    @property
    def round_deadline_s(self) -> float: ...
    @property
    def wait_for_participants_s(self) -> float: ...
    @property
    def seed(self) -> int: ...


def _schedule_checks(spec: _Scheduled) -> list[tuple[bool, str]]:
    """What every job spec's round schedule must satisfy."""
    return [
        (spec.round_deadline_s > 0, "round_deadline_s must be > 0"),
        (spec.wait_for_participants_s >= 0, "wait_for_participants_s must be >= 0"),
        (spec.seed >= 0, "seed must be >= 0"),
    ]


def _check_policy(policy: AggregationPolicy) -> None:
    try:
        policy.validate()
    except ValueError as exc:
        raise SpecError(f"policy: {exc}") from exc


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise SpecError(message)
