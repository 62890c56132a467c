"""What a participant forgets (participant/forgetting.py's forgotten_set) and ForgetSpec's own
rules (for_participant, excludes, validate), on the digits shards of test_forgetting."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.data.shards import Shard
from fused.participant.forgetting import forgotten_set
from fused.participant.site import shard_site
from tests.unit.test_forgetting import (
    ATTACKER,
    CASE_IDS,
    CASES,
    CLEAN,
    FORGET_CLASS,
    HOLDER,
    NUM_CLASSES,
    TARGET,
    TRIGGER,
    Case,
    assert_same_rows,
    backdoor_spec,
    class_drop_spec,
    digits_shards,
    ids_of,
    participant_spec,
    pid,
    samples_spec,
    spec_for,
    unchanged,
)


@pytest.fixture(scope="module")
def shards() -> list[Shard]:
    return digits_shards()


@pytest.fixture(autouse=True)
def _shards_untouched(shards: list[Shard]) -> Iterator[None]:
    """After every test, the module-scoped shards are still bit-for-bit what they were."""
    with unchanged(shards):
        yield


# --------------------------------------------------------------------------- forgotten_set


def _assert_trigger_stamped(got: torch.Tensor, original: torch.Tensor, pixel_max: int) -> None:
    assert got.shape == original.shape
    assert bool((got[..., -TRIGGER:, -TRIGGER:] == pixel_max).all())
    # Everything outside the bottom-right square is the original image.
    assert torch.equal(got[..., :-TRIGGER, :], original[..., :-TRIGGER, :])
    assert torch.equal(got[..., :, :-TRIGGER], original[..., :, :-TRIGGER])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forgotten_set(case: Case, shards: list[Shard]) -> None:
    shard = shards[case.viewer]
    spec = spec_for(case, shards)
    data, labels = forgotten_set(shard_site(shard), spec)
    assert labels.shape == (len(data),)
    assert labels.dtype == torch.int64
    assert data.x.shape[1:] == shard.train.x.shape[1:]
    if case.forgotten == "empty":
        assert len(data) == 0
        return
    if case.forgotten == "own_train":
        # The forgotten participant's whole train split, with the labels it holds: for the
        # label-flipping attacker those are the flipped ones, not y_true.
        assert_same_rows(data, shard.train)
        assert torch.equal(labels, shard.train.y)
        assert shard.meta.attacker and not torch.equal(labels, shard.train.y_true)
    elif case.forgotten == "class_test":
        want = shard.test.subset(shard.test.y_true == FORGET_CLASS)
        assert_same_rows(data, want)
        assert len(data) > 0
        assert bool((labels == FORGET_CLASS).all())
        assert torch.equal(labels, data.y_true)
    elif case.forgotten == "listed":
        assert spec is not None
        assert sorted(ids_of(data)) == sorted(spec.sample_ids)
        want = shard.train.subset(torch.isin(shard.train.ids, torch.tensor(spec.sample_ids)))
        assert_same_rows(data, want)
        assert torch.equal(labels, want.y)
    else:
        assert case.forgotten == "triggered"
        want = shard.test.subset(shard.test.y_true != TARGET)
        assert len(want) > 0
        assert ids_of(data) == ids_of(want)
        assert torch.equal(data.y_true, want.y_true)
        assert int((data.y_true == TARGET).sum()) == 0
        _assert_trigger_stamped(data.x, want.x, shard.meta.pixel_max)
        assert bool((labels == TARGET).all())


def test_forgotten_set_is_empty_without_a_spec(shards: list[Shard]) -> None:
    for shard in shards:
        data, labels = forgotten_set(shard_site(shard), None)
        assert len(data) == 0 and labels.numel() == 0


def test_trigger_uses_the_shard_pixel_max(shards: list[Shard]) -> None:
    """The stamp value is the data set's largest pixel (16 for digits), not 255."""
    spec = backdoor_spec(shards)
    data, _ = forgotten_set(shard_site(shards[CLEAN]), spec)
    assert shards[CLEAN].meta.pixel_max == 16
    assert set(data.x[..., -TRIGGER:, -TRIGGER:].flatten().tolist()) == {16}


def test_forgotten_samples_union_is_the_listed_ids(shards: list[Shard]) -> None:
    """Over all participants, the forgotten set of a samples spec is exactly the listed ids."""
    spec = samples_spec(shards)
    assert spec is not None
    found: list[int] = []
    for index, shard in enumerate(shards):
        data, _ = forgotten_set(shard_site(shard), spec.for_participant(pid(index)))
        found += ids_of(data)
    assert sorted(found) == sorted(spec.sample_ids)


# --------------------------------------------------------------------------- ForgetSpec


def test_for_participant_strips_sample_ids_for_non_holders(shards: list[Shard]) -> None:
    spec = backdoor_spec(shards)
    assert spec is not None
    assert spec.for_participant(pid(HOLDER)) == spec
    other = spec.for_participant(pid(CLEAN))
    assert other.sample_ids == ()
    assert dataclasses.replace(other, sample_ids=spec.sample_ids) == spec
    # Specs without sample ids go out unchanged.
    for plain in (participant_spec(shards), class_drop_spec(shards)):
        assert plain is not None
        assert plain.for_participant(pid(CLEAN)) == plain
        assert plain.for_participant(pid(ATTACKER)) == plain


def test_excludes_only_the_forgotten_participant() -> None:
    spec = ForgetSpec("participant", participant_id="p0")
    assert spec.excludes("p0")
    assert not spec.excludes("p1")
    # A sample holder and everyone under class forgetting still take part.
    assert not ForgetSpec("samples", participant_id="p0", sample_ids=(1,)).excludes("p0")
    assert not ForgetSpec("class", participant_id="p0", class_label=1).excludes("p0")


VALID_SPECS = [
    (ForgetSpec("participant", participant_id="p0"), 10),
    (ForgetSpec("class", class_label=0), 10),
    (ForgetSpec("class", class_label=9, relabel=True), 10),
    (ForgetSpec("class", class_label=42), None),  # no model to check the upper bound against
    (ForgetSpec("samples", participant_id="p1", sample_ids=(3,)), 10),
    (ForgetSpec("samples", participant_id="p1", sample_ids=(3,), trigger_size=2), 10),
]


@pytest.mark.parametrize(("spec", "num_classes"), VALID_SPECS)
def test_validate_accepts(spec: ForgetSpec, num_classes: int | None) -> None:
    spec.validate(num_classes)


INVALID_SPECS = [
    ("paradigm", ForgetSpec("everything"), 10, "paradigm"),
    ("participant-no-id", ForgetSpec("participant"), 10, "participant id"),
    ("samples-no-holder", ForgetSpec("samples", sample_ids=(1,)), 10, "participant id"),
    ("samples-no-ids", ForgetSpec("samples", participant_id="p0"), 10, "sample id"),
    ("class-unset", ForgetSpec("class"), 10, "class -1"),
    ("class-too-high", ForgetSpec("class", class_label=10), 10, "class 10"),
    (
        "negative-trigger",
        ForgetSpec("samples", participant_id="p0", sample_ids=(1,), trigger_size=-1),
        10,
        "trigger_size",
    ),
]


@pytest.mark.parametrize(
    ("spec", "num_classes", "message"),
    [pytest.param(s, n, m, id=i) for i, s, n, m in INVALID_SPECS],
)
def test_validate_rejects(spec: ForgetSpec, num_classes: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec.validate(num_classes)


@pytest.mark.parametrize("target", [-1, NUM_CLASSES])
def test_validate_rejects_trigger_target_outside_the_classes(target: int) -> None:
    spec = ForgetSpec(
        "samples", participant_id="p1", sample_ids=(1,), trigger_size=2, trigger_target=target
    )
    with pytest.raises(ValueError, match="trigger"):
        spec.validate(NUM_CLASSES)
