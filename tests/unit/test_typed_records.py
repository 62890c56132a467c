"""Typed round metrics, version meta and unlearning specs: each round-trips through its one
stored JSON form, reads the form state directories already hold, and the method registries of
the shared spec and the coordinator name the same methods."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from fused.common.domain.round_metrics import (
    AggregateSummary,
    ByteSummary,
    EvalSummary,
    LayerDistances,
    LayerScore,
    PayloadKind,
    Ranking,
    RoundMetrics,
)
from fused.common.domain.specs import (
    METHOD_CONFIGS,
    FinetuneConfig,
    FusedConfig,
    RetrainConfig,
    SpecError,
    UnlearningSpec,
    method_config,
)
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.version_meta import AdapterMeta, UnlearnedMeta, VersionMeta
from fused.coordinator.methods import METHODS

EVAL = EvalSummary(0.9, None, 0, 0.3, 40, [18, 18], [20, 20], {"p0": 0.9, "p1": 0.9})
BYTES = ByteSummary({"p0": 10, "p1": 12}, {"p0": 100, "p1": 100})


@dataclass(frozen=True)
class StoredRound:
    name: str
    metrics: RoundMetrics
    stored: dict[str, Any]  # the flat JSON a state directory holds


ROUNDS = [
    StoredRound(
        "train",
        RoundMetrics(1.5, {}, BYTES, AggregateSummary(PayloadKind.WEIGHTS, "a" * 64, 0.25, 300)),
        {
            "seconds": 1.5,
            "failures": {},
            "bytes": {"up": BYTES.up, "down": BYTES.down, "total": 222},
            "train_loss": 0.25,
            "num_examples": 300,
            "model": "a" * 64,
        },
    ),
    StoredRound(
        "adapter, as stored before num_examples was recorded",
        RoundMetrics(
            2.0,
            {"p2": "no result within 5 s"},
            None,
            AggregateSummary(PayloadKind.ADAPTER, "b" * 64, 0.5),
        ),
        {
            "seconds": 2.0,
            "failures": {"p2": "no result within 5 s"},
            "train_loss": 0.5,
            "values": "b" * 64,
        },
    ),
    StoredRound(
        "evaluate",
        RoundMetrics(0.5, {}, None, evaluation=EVAL),
        {
            "seconds": 0.5,
            "failures": {},
            "accuracy": 0.9,
            "fa": None,
            "forget_total": 0,
            "loss": 0.3,
            "num_examples": 40,
            "correct": [18, 18],
            "total": [20, 20],
            "per_participant": {"p0": 0.9, "p1": 0.9},
        },
    ),
    StoredRound(
        "sensitivity",
        RoundMetrics(
            0.1,
            {},
            None,
            ranking=Ranking(
                "forget", [LayerScore("fc1.weight", 2.5, 100, True, 0.5, 1.25)], "a note"
            ),
        ),
        {
            "seconds": 0.1,
            "failures": {},
            "ranking": [
                {
                    "name": "fc1.weight",
                    "distance": 2.5,
                    "numel": 100,
                    "selected": True,
                    "forget_distance": 0.5,
                    "score": 1.25,
                }
            ],
            "selection": {"rule": "forget", "note": "a note"},
        },
    ),
    StoredRound(
        "a training job's last round, with the distances it recorded",
        RoundMetrics(
            1.0,
            {},
            None,
            AggregateSummary(PayloadKind.WEIGHTS, "c" * 64, 0.5, 30),
            layer_distances=LayerDistances({"p0": {"fc1.weight": 2.5}}, {"p0": 30}),
        ),
        {
            "seconds": 1.0,
            "failures": {},
            "train_loss": 0.5,
            "num_examples": 30,
            "model": "c" * 64,
            "layer_distances": {"distances": {"p0": {"fc1.weight": 2.5}}, "examples": {"p0": 30}},
        },
    ),
]


@pytest.mark.parametrize("case", ROUNDS, ids=[c.name for c in ROUNDS])
def test_round_metrics_have_one_stored_form(case: StoredRound) -> None:
    assert case.metrics.to_dict() == case.stored
    assert RoundMetrics.from_dict(json.loads(json.dumps(case.stored))) == case.metrics


ADAPTER = AdapterMeta("c" * 64, "d" * 64, ("fc1.weight", "fc2.weight"), 0.05, 42, "e" * 64, 845)
VERSIONS = [
    (
        VersionMeta("digits", 10, accuracy=0.95),
        {"dataset": "digits", "num_classes": 10, "accuracy": 0.95},
    ),
    (
        VersionMeta("digits", 10, adapter=ADAPTER, unlearned=UnlearnedMeta("fused", 0.9, 0.04)),
        {
            "dataset": "digits",
            "num_classes": 10,
            "adapter_digest": "c" * 64,
            "base_digest": "d" * 64,
            "layers": ["fc1.weight", "fc2.weight"],
            "density": 0.05,
            "mask_seed": 42,
            "mask_digest": "e" * 64,
            "adapter_params": 845,
            "method": "fused",
            "ra": 0.9,
            "fa": 0.04,
        },
    ),
    (
        VersionMeta("digits", 10, unlearned=UnlearnedMeta("retrain", 0.91, None)),
        {"dataset": "digits", "num_classes": 10, "method": "retrain", "ra": 0.91, "fa": None},
    ),
    (
        VersionMeta("digits", 10, forgets=("f-1", "f-2")),
        {"dataset": "digits", "num_classes": 10, "forgets": ["f-1", "f-2"]},
    ),
]


@pytest.mark.parametrize(("meta", "stored"), VERSIONS)
def test_version_meta_has_one_stored_form(meta: VersionMeta, stored: dict[str, Any]) -> None:
    assert meta.to_dict() == stored
    assert VersionMeta.from_dict(json.loads(json.dumps(stored))) == meta


def test_an_adapter_version_names_the_blobs_it_needs() -> None:
    meta = VersionMeta("digits", 10, adapter=ADAPTER)
    assert meta.blobs() == ["c" * 64, "d" * 64]
    assert VersionMeta("digits", 10).blobs() == []
    assert ADAPTER.ref().values_blob_id == "c" * 64


FORGET = ForgetSpec("samples", participant_id="p1", sample_ids=(3, 5), trigger_size=2)


@pytest.mark.parametrize(
    "config", [FusedConfig(4, ("fc1.weight",), 0.2, "bfloat16"), RetrainConfig(), FinetuneConfig()]
)
def test_unlearning_spec_round_trips_through_its_stored_form(config: Any) -> None:
    spec = UnlearningSpec(FORGET, config, base_version="m-1", rounds=3, seed=9)
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored["method"] == config.name
    assert UnlearningSpec.from_dict(stored) == spec


def test_a_spec_stored_with_every_method_field_still_loads() -> None:
    """State directories hold specs written when FUSED's knobs were fields of every method."""
    old = {
        "forget": {"paradigm": "class", "class_label": 3},
        "base_version": "",
        "method": "retrain",
        "rounds": 5,
        "train": {"lr": 0.05},
        "top_k": 2,
        "layers": [],
        "density": 0.1,
        "min_participants": 1,
        "round_deadline_s": 300.0,
        "wait_for_participants_s": 60.0,
        "seed": 0,
        "evaluate_each_round": True,
        "upload_dtype": "float32",
    }
    spec = UnlearningSpec.from_dict(old)
    assert spec.config == RetrainConfig() and spec.method == "retrain"
    assert spec.train is not None and spec.train.lr == 0.05
    assert spec.forget == ForgetSpec("class", class_label=3)
    assert spec.stop_patience == 0  # stored before stopping rules: it ran every round
    fused = UnlearningSpec.from_dict({**old, "method": "fused", "layers": ["a"]})
    assert fused.config == FusedConfig(2, ("a",), 0.1, "float32", selection="cli")


def test_unknown_methods_and_bad_knobs_are_refused() -> None:
    with pytest.raises(SpecError, match="method must be one of fused, retrain, finetune"):
        method_config("sisa", {})
    with pytest.raises(SpecError, match="density must be in"):
        UnlearningSpec(FORGET, FusedConfig(density=0.0)).validate()
    UnlearningSpec(FORGET, RetrainConfig()).validate()  # FUSED's knobs are not retrain's


def test_every_method_has_a_config_and_an_implementation() -> None:
    assert set(METHOD_CONFIGS) == set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name == METHOD_CONFIGS[name].name
