"""Task execution on local data (participant/executor.py) with real digits shards and models."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.adapters import (
    AdapterLayout,
    build_layout,
)
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import Shard
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.models import init_model
from fused.common.ml.workloads import workload_for
from fused.participant.executor import (
    load_model,
    local_evaluate,
    local_sensitivity,
    local_update,
)
from fused.participant.forgetting import forgotten_set, forgotten_train, remaining_test
from fused.participant.site import shard_site
from fused.participant.training import TrainConfig, evaluate, train_local

NUM_CLASSES = 10
ATTACKER, HOLDER, CLEAN = 0, 1, 2
FORGET_CLASS = 3
TARGET = 7
TRIGGER = 2
MLP_LAYERS = ("net.4.weight", "net.0.weight")  # deliberately not sorted

CONFIG = PartitionConfig(
    num_participants=3,
    seed=3,
    attacker=ATTACKER,
    backdoor_participant=HOLDER,
    backdoor_count=6,
    backdoor_target=TARGET,
    trigger_size=TRIGGER,
)
CFG = TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=5)

Weights = dict[str, torch.Tensor]


def clone(weights: Weights) -> Weights:
    return {k: v.detach().clone() for k, v in weights.items()}


def assert_bit_equal(a: Weights, b: Weights) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def shards() -> list[Shard]:
    return partition_source(load_digits_source(), CONFIG)


@pytest.fixture(scope="module")
def mlp_weights() -> Weights:
    return clone(init_model("mlp", NUM_CLASSES, seed=0).state_dict())


@pytest.fixture(scope="module")
def trained_weights(shards: list[Shard], mlp_weights: Weights) -> Weights:
    """An MLP that has learnt something, so evaluation counts are not all zero."""
    model = load_model(workload_for("mlp", NUM_CLASSES), mlp_weights)
    train_local(model, shards[CLEAN].train, TrainConfig(local_epochs=5, lr=0.1, batch_size=16))
    train_local(model, shards[HOLDER].train, TrainConfig(local_epochs=5, lr=0.1, batch_size=16))
    return clone(model.state_dict())


def mlp_layout(weights: Weights, density: float = 0.2, seed: int = 9) -> AdapterLayout:
    return build_layout({n: tuple(weights[n].shape) for n in MLP_LAYERS}, density, seed)


# --------------------------------------------------------------------------- sensitivity


def test_local_sensitivity_is_the_l1_distance_of_one_round(
    shards: list[Shard], mlp_weights: Weights
) -> None:
    shard = shards[CLEAN]
    given = clone(mlp_weights)
    outcome = local_sensitivity(shard_site(shard), given, CFG)
    distances, num_examples = outcome.distances, outcome.num_examples
    assert outcome.forget_distances == {} and outcome.forget_examples == 0  # not asked
    assert_bit_equal(given, mlp_weights)  # the weights passed in are not touched

    reference = load_model(workload_for("mlp", NUM_CLASSES), mlp_weights)
    names = [name for name, _ in reference.named_parameters()]
    assert list(distances) == names  # exactly the parameters (no buffers, no extras)
    assert num_examples == len(shard.train)
    # Only numbers come back, never tensors (the model itself must not leave the participant).
    assert all(type(v) is float for v in distances.values())
    assert all(math.isfinite(v) and v > 0 for v in distances.values())

    # Independently: train a copy with the same data and config, sum |after - before| in numpy.
    trained = load_model(workload_for("mlp", NUM_CLASSES), mlp_weights)
    stats = train_local(trained, shard.train, CFG)
    assert stats.num_examples == num_examples
    after = dict(trained.named_parameters())
    for name in names:
        before_np = mlp_weights[name].numpy().astype(np.float64)
        after_np = after[name].detach().numpy().astype(np.float64)
        expected = float(np.abs(after_np - before_np).sum())
        assert distances[name] == pytest.approx(expected, rel=1e-6, abs=0.0), name

    # And the same round as a FedAvg step gives exactly those distances too.
    updated, _ = local_update(shard_site(shard), mlp_weights, CFG)
    for name in names:
        diff = (updated[name].double() - mlp_weights[name].double()).abs().sum()
        assert distances[name] == pytest.approx(float(diff), rel=1e-6, abs=0.0), name


def test_local_sensitivity_ignores_the_forget_spec_data_view(
    shards: list[Shard], mlp_weights: Weights
) -> None:
    """Sensitivity trains on the whole local train split and is deterministic per seed."""
    shard = shards[ATTACKER]
    a = local_sensitivity(shard_site(shard), mlp_weights, CFG)
    b = local_sensitivity(shard_site(shard), mlp_weights, CFG)
    assert a == b
    assert a.num_examples == len(shard.train)


@pytest.mark.parametrize(
    ("forget", "holder"),
    [
        (ForgetSpec("participant", participant_id="p0"), True),
        (ForgetSpec("participant", participant_id="p1"), False),
        (ForgetSpec("class", class_label=1), True),
        (ForgetSpec("samples", participant_id="p0", sample_ids=(0, 1, 2, 3)), True),
        (ForgetSpec("samples", participant_id="p1", sample_ids=(0, 1)), False),
    ],
)
def test_local_sensitivity_measures_the_forgotten_data_it_holds(
    shards: list[Shard], mlp_weights: Weights, forget: ForgetSpec, holder: bool
) -> None:
    """A forget-aware rule's second measurement: the same round on the forgotten training
    data alone, with the labels trained on; nothing from a participant that holds none. The
    CLI distances are the same as without the request."""
    site = shard_site(shards[0])
    assert site.participant_id == "p0"
    if forget.paradigm == "samples":  # four samples p0 holds
        ids = tuple(int(i) for i in shards[0].train.ids[:4])
        forget = dataclasses.replace(forget, sample_ids=ids)
    plain = local_sensitivity(site, mlp_weights, CFG)
    outcome = local_sensitivity(site, mlp_weights, CFG, forget=forget)
    assert (outcome.distances, outcome.num_examples) == (plain.distances, plain.num_examples)
    if not holder:
        assert outcome.forget_distances == {} and outcome.forget_examples == 0
        return
    held = forgotten_train(site, forget)
    assert 0 < outcome.forget_examples == len(held) <= len(shards[0].train)
    trained = load_model(workload_for("mlp", NUM_CLASSES), mlp_weights)
    train_local(trained, held, CFG)
    for name, p in trained.named_parameters():
        expected = float((p.detach().double() - mlp_weights[name].double()).abs().sum())
        assert outcome.forget_distances[name] == pytest.approx(expected, rel=1e-6), name


# --------------------------------------------------------------------------- evaluation


def _backdoor_spec(shards: list[Shard]) -> ForgetSpec:
    return ForgetSpec(
        "samples",
        participant_id="p1",
        sample_ids=shards[HOLDER].meta.backdoor_ids,
        trigger_size=TRIGGER,
        trigger_target=TARGET,
    )


EVAL_CASES = [
    ("none", HOLDER),
    ("participant-forgotten", ATTACKER),
    ("participant-other", CLEAN),
    ("class", CLEAN),
    ("class-attacker", ATTACKER),
    ("samples-holder", CLEAN),
    ("samples-non-holder", HOLDER),
    ("backdoor-holder", HOLDER),
    ("backdoor-non-holder", CLEAN),
]


def _eval_spec(kind: str, shards: list[Shard]) -> ForgetSpec | None:
    listed = tuple(int(i) for i in shards[CLEAN].train.ids[::40])
    specs: dict[str, ForgetSpec | None] = {
        "none": None,
        "participant-forgotten": ForgetSpec("participant", participant_id="p0"),
        "participant-other": ForgetSpec("participant", participant_id="p0"),
        "class": ForgetSpec("class", class_label=FORGET_CLASS),
        "class-attacker": ForgetSpec("class", class_label=FORGET_CLASS),
        "samples-holder": ForgetSpec("samples", participant_id="p2", sample_ids=listed),
        "samples-non-holder": ForgetSpec("samples", participant_id="p2", sample_ids=listed),
        "backdoor-holder": _backdoor_spec(shards),
        "backdoor-non-holder": _backdoor_spec(shards),
    }
    return specs[kind]


@pytest.mark.parametrize(("kind", "viewer"), EVAL_CASES, ids=[k for k, _ in EVAL_CASES])
def test_local_evaluate_counts(
    kind: str, viewer: int, shards: list[Shard], trained_weights: Weights
) -> None:
    shard = shards[viewer]
    spec = _eval_spec(kind, shards)
    if spec is not None:
        spec = spec.for_participant(shard.meta.participant_id)
    outcome = local_evaluate(shard_site(shard), trained_weights, spec)

    model = load_model(workload_for("mlp", NUM_CLASSES), trained_weights)
    kept_data = remaining_test(shard_site(shard), spec)
    kept = evaluate(model, kept_data, NUM_CLASSES)
    assert outcome.correct == tuple(kept.correct)
    assert outcome.total == tuple(kept.total)
    assert outcome.num_examples == len(kept_data)
    assert outcome.loss_sum == pytest.approx(kept.loss_sum, rel=1e-9, abs=1e-9)

    forgotten, labels = forgotten_set(shard_site(shard), spec)
    hit = evaluate(model, forgotten, NUM_CLASSES, labels=labels)
    assert outcome.forget_total == len(forgotten) == hit.num_examples
    assert outcome.forget_correct == sum(hit.correct)

    # And independently of `evaluate`: argmax of the logits against the forgotten labels.
    with torch.no_grad():
        logits = model.eval()(forgotten.features())
    assert outcome.forget_correct == int((logits.argmax(dim=1) == labels).sum())
    if kind in ("participant-forgotten", "class", "class-attacker", "samples-holder"):
        assert outcome.forget_total > 0
    if kind == "participant-forgotten":
        assert outcome.num_examples == 0
        assert outcome.forget_total == len(shard.train)
    if kind.startswith("backdoor"):
        assert outcome.forget_total == int((shard.test.y_true != TARGET).sum())


def test_local_evaluate_without_spec_is_plain_evaluation(
    shards: list[Shard], trained_weights: Weights
) -> None:
    shard = shards[CLEAN]
    outcome = local_evaluate(shard_site(shard), trained_weights)
    counts = evaluate(
        load_model(workload_for("mlp", NUM_CLASSES), trained_weights), shard.test, NUM_CLASSES
    )
    assert outcome.correct == tuple(counts.correct)
    assert outcome.total == tuple(counts.total)
    assert (outcome.forget_correct, outcome.forget_total) == (0, 0)
    assert sum(outcome.correct) > len(shard.test) // 2  # the fixture model learnt something
