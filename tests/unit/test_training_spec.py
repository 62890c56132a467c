"""TrainingSpec validation and the per-task seed derivation."""

from __future__ import annotations

import hashlib
import math

import pytest

from fused.common.domain.specs import SpecError, TrainingSpec
from fused.common.domain.train_config import TrainConfig, task_seed
from fused.common.rpc.task_convert import train_config_from_proto, train_config_to_proto

TRAIN_CFG = TrainConfig(
    local_epochs=3, lr=0.05, momentum=0.5, weight_decay=1e-4, batch_size=32, seed=2**40 + 7
)
SPEC = TrainingSpec(
    model="lenet",
    rounds=4,
    train=TRAIN_CFG,
    participants_per_round=3,
    min_participants=2,
    round_deadline_s=12.5,
    seed=99,
    init_version="v-123",
    wait_for_participants_s=0.25,
    evaluate_each_round=False,
)


# --- TrainingSpec.validate ------------------------------------------------------------------

BAD_SPECS: list[tuple[str, TrainingSpec, str]] = [
    ("rounds_zero", TrainingSpec(rounds=0), "rounds must be >= 1, got 0"),
    ("rounds_negative", TrainingSpec(rounds=-3), "rounds must be >= 1, got -3"),
    ("min_participants_zero", TrainingSpec(min_participants=0), "min_participants must be >= 1"),
    (
        "participants_per_round_negative",
        TrainingSpec(participants_per_round=-1),
        "participants_per_round must be >= 0",
    ),
    (
        "participants_per_round_below_min",
        TrainingSpec(participants_per_round=2, min_participants=3),
        "participants_per_round must be 0 (all) or >= min_participants",
    ),
    ("deadline_zero", TrainingSpec(round_deadline_s=0.0), "round_deadline_s must be > 0"),
    ("deadline_nan", TrainingSpec(round_deadline_s=math.nan), "round_deadline_s must be > 0"),
    (
        "wait_negative",
        TrainingSpec(wait_for_participants_s=-0.5),
        "wait_for_participants_s must be >= 0",
    ),
    ("seed_negative", TrainingSpec(seed=-1), "seed must be >= 0"),
    (
        "train_epochs",
        TrainingSpec(train=TrainConfig(local_epochs=0)),
        "train: local_epochs must be >= 1, got 0",
    ),
    ("train_lr_zero", TrainingSpec(train=TrainConfig(lr=0.0)), "train: lr must be > 0"),
    ("train_lr_nan", TrainingSpec(train=TrainConfig(lr=math.nan)), "train: lr must be finite"),
    (
        "train_momentum_one",
        TrainingSpec(train=TrainConfig(momentum=1.0)),
        "train: momentum must be in [0, 1)",
    ),
    (
        "train_momentum_negative",
        TrainingSpec(train=TrainConfig(momentum=-0.1)),
        "train: momentum must be in [0, 1)",
    ),
    (
        "train_weight_decay",
        TrainingSpec(train=TrainConfig(weight_decay=-1e-3)),
        "train: weight_decay must be >= 0",
    ),
    (
        "train_batch_size",
        TrainingSpec(train=TrainConfig(batch_size=0)),
        "train: batch_size must be >= 1, got 0",
    ),
]


@pytest.mark.parametrize(
    ("spec", "fragment"), [(s, f) for _, s, f in BAD_SPECS], ids=[n for n, _, _ in BAD_SPECS]
)
def test_invalid_spec_is_rejected(spec: TrainingSpec, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_nan_weight_decay_is_rejected() -> None:
    with pytest.raises(SpecError, match="weight_decay"):
        TrainingSpec(train=TrainConfig(weight_decay=math.nan)).validate()


@pytest.mark.parametrize(
    "spec",
    [
        TrainingSpec(),
        SPEC,
        TrainingSpec(participants_per_round=0, min_participants=5),
        TrainingSpec(participants_per_round=3, min_participants=3),
        TrainingSpec(wait_for_participants_s=0.0, train=TrainConfig(momentum=0.0)),
    ],
)
def test_valid_spec_passes(spec: TrainingSpec) -> None:
    spec.validate()  # does not raise
    assert TrainingSpec.from_dict(spec.to_dict()) == spec


# --- task_seed -------------------------------------------------------------------------------


def test_task_seed_is_stable_and_pinned() -> None:
    assert task_seed(7, 3, "p1") == task_seed(7, 3, "p1")
    # Pinned: a change here changes every participant's local randomness across versions.
    assert task_seed(7, 3, "p1") == 4610554823300032037
    assert task_seed(0, 0, "") == 5700210485789788060
    digest = hashlib.sha256(b"7:3:p1").digest()
    assert task_seed(7, 3, "p1") == int.from_bytes(digest[:8], "little") >> 1


def test_task_seed_varies_with_each_input() -> None:
    base = task_seed(7, 3, "p1")
    assert task_seed(7, 3, "p2") != base
    assert task_seed(7, 4, "p1") != base
    assert task_seed(8, 3, "p1") != base
    seeds = {task_seed(1, r, f"p{i}") for r in range(20) for i in range(20)}
    assert len(seeds) == 400


@pytest.mark.parametrize(
    ("job_seed", "round_number", "pid"),
    [(0, 0, ""), (2**64 - 1, 2**32 - 1, "x" * 64), (123, 1, "participant-ü")],
)
def test_task_seed_fits_int64(job_seed: int, round_number: int, pid: str) -> None:
    seed = task_seed(job_seed, round_number, pid)
    assert 0 <= seed < 2**63
    # and it is carried intact by the uint64 TrainConfig.seed field
    cfg = TrainConfig(seed=seed)
    assert train_config_from_proto(train_config_to_proto(cfg)).seed == seed
