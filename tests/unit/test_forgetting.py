"""How a participant applies a forget spec to its shard (participant/forgetting.py), on real
digits shards: p0 is a label-flipping attacker, p1 holds a backdoor, p2 is clean."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.data.partition import PartitionConfig, partition_source
from fused.common.ml.data.shards import Shard
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.data.tensors import TensorData
from fused.participant.forgetting import forgotten_set, remaining_test, remaining_train

NUM_CLASSES = 10
ATTACKER, HOLDER, CLEAN = 0, 1, 2
FORGET_CLASS = 3
TARGET = 7
TRIGGER = 2
BACKDOOR_COUNT = 6
SEED = 11

CONFIG = PartitionConfig(
    num_participants=3,
    seed=3,
    attacker=ATTACKER,
    backdoor_participant=HOLDER,
    backdoor_count=BACKDOOR_COUNT,
    backdoor_target=TARGET,
    trigger_size=TRIGGER,
)


@dataclass(frozen=True)
class Snapshot:
    """Clones of every shard tensor, to show nothing is modified in place."""

    tensors: list[dict[str, torch.Tensor]]


def _split_tensors(prefix: str, data: TensorData) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.x": data.x.clone(),
        f"{prefix}.y": data.y.clone(),
        f"{prefix}.y_true": data.y_true.clone(),
        f"{prefix}.ids": data.ids.clone(),
    }


def _snapshot(shards: list[Shard]) -> Snapshot:
    return Snapshot(
        [_split_tensors("train", s.train) | _split_tensors("test", s.test) for s in shards]
    )


@pytest.fixture(scope="module")
def shards() -> list[Shard]:
    result = partition_source(load_digits_source(), CONFIG)
    # Preconditions the cases below rely on.
    assert result[ATTACKER].meta.attacker
    assert len(result[HOLDER].meta.backdoor_ids) == BACKDOOR_COUNT
    for shard in result:
        assert int((shard.train.y == FORGET_CLASS).sum()) > 0
        assert int((shard.test.y_true == FORGET_CLASS).sum()) > 0
    return result


@pytest.fixture(scope="module")
def snapshot(shards: list[Shard]) -> Snapshot:
    return _snapshot(shards)


@pytest.fixture(autouse=True)
def _shards_untouched(shards: list[Shard], snapshot: Snapshot) -> Iterator[None]:
    """After every test, the module-scoped shards are still bit-for-bit what they were."""
    yield
    now = _snapshot(shards)
    for before, after in zip(snapshot.tensors, now.tensors, strict=True):
        for key, tensor in before.items():
            assert torch.equal(tensor, after[key]), key


# --------------------------------------------------------------------------- specs


def _pid(index: int) -> str:
    return f"p{index}"


def _listed_ids(shards: list[Shard]) -> tuple[int, ...]:
    """A few of the clean participant's train samples (the samples paradigm without trigger)."""
    return tuple(int(i) for i in shards[CLEAN].train.ids[::50])


SpecFactory = Callable[[list[Shard]], ForgetSpec | None]


def _no_spec(shards: list[Shard]) -> ForgetSpec | None:
    return None


def _participant_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("participant", participant_id=_pid(ATTACKER))


def _class_drop_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("class", class_label=FORGET_CLASS)


def _class_relabel_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)


def _samples_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("samples", participant_id=_pid(CLEAN), sample_ids=_listed_ids(shards))


def _backdoor_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec(
        "samples",
        participant_id=_pid(HOLDER),
        sample_ids=shards[HOLDER].meta.backdoor_ids,
        trigger_size=TRIGGER,
        trigger_target=TARGET,
    )


TrainKind = Literal["all", "none", "drop_class", "relabel", "drop_listed"]
TestKind = Literal["all", "none", "drop_class"]
ForgottenKind = Literal["empty", "own_train", "class_test", "listed", "triggered"]


@dataclass(frozen=True)
class Case:
    id: str
    spec: SpecFactory
    viewer: int  # the shard applying the spec (as sent to it by `for_participant`)
    train: TrainKind
    test: TestKind
    forgotten: ForgottenKind


CASES = [
    Case("none", _no_spec, HOLDER, "all", "all", "empty"),
    Case("participant-forgotten", _participant_spec, ATTACKER, "none", "none", "own_train"),
    Case("participant-other", _participant_spec, CLEAN, "all", "all", "empty"),
    Case(
        "class-drop-attacker", _class_drop_spec, ATTACKER, "drop_class", "drop_class", "class_test"
    ),
    Case("class-drop-clean", _class_drop_spec, CLEAN, "drop_class", "drop_class", "class_test"),
    Case("class-relabel", _class_relabel_spec, CLEAN, "relabel", "drop_class", "class_test"),
    Case("samples-holder", _samples_spec, CLEAN, "drop_listed", "all", "listed"),
    Case("samples-non-holder", _samples_spec, HOLDER, "all", "all", "empty"),
    Case("backdoor-holder", _backdoor_spec, HOLDER, "drop_listed", "all", "triggered"),
    Case("backdoor-non-holder", _backdoor_spec, ATTACKER, "all", "all", "triggered"),
    Case("backdoor-clean", _backdoor_spec, CLEAN, "all", "all", "triggered"),
]
CASE_IDS = [c.id for c in CASES]


def _spec_for(case: Case, shards: list[Shard]) -> ForgetSpec | None:
    spec = case.spec(shards)
    return None if spec is None else spec.for_participant(_pid(case.viewer))


def _mask_ids(data: TensorData, mask: torch.Tensor) -> list[int]:
    return [int(i) for i in data.ids[mask]]


def _ids(data: TensorData) -> list[int]:
    return [int(i) for i in data.ids]


def _assert_same_rows(got: TensorData, want: TensorData) -> None:
    """Same samples, same order, same pixels and labels."""
    assert got.ids.tolist() == want.ids.tolist()
    assert torch.equal(got.x, want.x)
    assert torch.equal(got.y, want.y)
    assert torch.equal(got.y_true, want.y_true)
    assert got.scale == want.scale


# --------------------------------------------------------------------------- remaining_train


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_remaining_train(case: Case, shards: list[Shard]) -> None:
    shard = shards[case.viewer]
    spec = _spec_for(case, shards)
    got = remaining_train(shard, spec, seed=SEED)
    train = shard.train
    everything = torch.ones(len(train), dtype=torch.bool)
    listed = torch.tensor(spec.sample_ids if spec is not None else (), dtype=torch.int64)
    expected_kept = {
        "all": everything,
        "relabel": everything,
        "none": torch.zeros(len(train), dtype=torch.bool),
        "drop_class": train.y != FORGET_CLASS,
        "drop_listed": ~torch.isin(train.ids, listed),
    }[case.train]
    assert _ids(got) == _mask_ids(train, expected_kept)
    assert got.x.shape[1:] == train.x.shape[1:]
    if case.train == "relabel":
        assert torch.equal(got.x, train.x)
        assert torch.equal(got.y_true, train.y_true)
        assert not torch.equal(got.y, train.y)
    else:
        _assert_same_rows(got, train.subset(expected_kept))
    if case.train == "drop_class":
        assert int((got.y == FORGET_CLASS).sum()) == 0
        # Nothing but class FORGET_CLASS is removed: every other sample is still there.
        assert len(got) == len(train) - int((train.y == FORGET_CLASS).sum())
    if case.train == "drop_listed":
        assert spec is not None
        assert len(spec.sample_ids) > 0
        assert set(spec.sample_ids) <= set(_ids(train))  # the holder really held them
        assert len(got) == len(train) - len(spec.sample_ids)
        assert not set(spec.sample_ids) & set(_ids(got))


def test_forgotten_participant_trains_on_nothing(shards: list[Shard]) -> None:
    for index in range(3):
        spec = ForgetSpec("participant", participant_id=_pid(index))
        assert len(remaining_train(shards[index], spec, seed=0)) == 0
        for other in range(3):
            if other != index:
                assert len(remaining_train(shards[other], spec, seed=0)) == len(shards[other].train)


def test_samples_paradigm_only_the_holder_drops_even_with_full_spec(shards: list[Shard]) -> None:
    """A non-holder that got the unstripped spec still keeps its data (ids are not its own)."""
    spec = _samples_spec(shards)
    assert spec is not None
    for index in (ATTACKER, HOLDER):
        got = remaining_train(shards[index], spec, seed=0)
        assert _ids(got) == _ids(shards[index].train)


# --------------------------------------------------------------------------- relabelling


@pytest.mark.parametrize("viewer", [ATTACKER, HOLDER, CLEAN])
def test_relabel_changes_exactly_the_class_labels(viewer: int, shards: list[Shard]) -> None:
    shard = shards[viewer]
    spec = ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)
    got = remaining_train(shard, spec, seed=SEED)
    train = shard.train
    hit = train.y == FORGET_CLASS
    assert int(hit.sum()) > 0
    # Every sample kept, in order, with pixels, true labels and ids untouched.
    assert torch.equal(got.ids, train.ids)
    assert torch.equal(got.x, train.x)
    assert torch.equal(got.y_true, train.y_true)
    assert got.scale == train.scale
    # Exactly the class's labels change, to other valid classes, never to the class itself.
    assert torch.equal(got.y != train.y, hit)
    assert torch.equal(got.y[~hit], train.y[~hit])
    new = got.y[hit]
    assert int((new == FORGET_CLASS).sum()) == 0
    assert int(new.min()) >= 0 and int(new.max()) < NUM_CLASSES
    assert got.y.dtype == train.y.dtype
    if len(new) >= 10:
        assert len(set(new.tolist())) > 1  # spread over other classes, not a fixed shift


def test_relabel_is_deterministic_per_seed_and_differs_across_seeds(shards: list[Shard]) -> None:
    shard = shards[CLEAN]
    spec = ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)
    a = remaining_train(shard, spec, seed=SEED)
    b = remaining_train(shard, spec, seed=SEED)
    c = remaining_train(shard, spec, seed=SEED + 1)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    # The seed only matters for relabelling: dropping is seed-independent.
    drop = ForgetSpec("class", class_label=FORGET_CLASS)
    assert _ids(remaining_train(shard, drop, 1)) == _ids(remaining_train(shard, drop, 2))


def test_samples_relabel_changes_exactly_the_listed_labels_at_the_holder(
    shards: list[Shard],
) -> None:
    spec = _backdoor_spec(shards)
    assert spec is not None
    spec = dataclasses.replace(spec, relabel=True)
    holder = shards[HOLDER].train
    got = remaining_train(shards[HOLDER], spec, seed=SEED)
    listed = torch.isin(holder.ids, torch.tensor(spec.sample_ids))
    assert int(listed.sum()) == BACKDOOR_COUNT
    assert torch.equal(got.ids, holder.ids)
    assert torch.equal(got.x, holder.x)
    assert torch.equal(got.y_true, holder.y_true)
    assert torch.equal(got.y != holder.y, listed)  # every listed label moves, nothing else
    assert int(got.y.min()) >= 0 and int(got.y.max()) < NUM_CLASSES
    assert torch.equal(got.y, remaining_train(shards[HOLDER], spec, seed=SEED).y)
    for index in (ATTACKER, CLEAN):
        other = remaining_train(shards[index], spec.for_participant(_pid(index)), seed=SEED)
        _assert_same_rows(other, shards[index].train)


def test_relabel_leaves_the_global_rng_alone(shards: list[Shard]) -> None:
    spec = ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    remaining_train(shards[CLEAN], spec, seed=SEED)
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------- remaining_test


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_remaining_test(case: Case, shards: list[Shard]) -> None:
    shard = shards[case.viewer]
    got = remaining_test(shard, _spec_for(case, shards))
    test = shard.test
    expected_kept = {
        "all": torch.ones(len(test), dtype=torch.bool),
        "none": torch.zeros(len(test), dtype=torch.bool),
        "drop_class": test.y_true != FORGET_CLASS,
    }[case.test]
    _assert_same_rows(got, test.subset(expected_kept))
    if case.test == "drop_class":
        assert int((got.y_true == FORGET_CLASS).sum()) == 0
        assert len(got) == len(test) - int((test.y_true == FORGET_CLASS).sum())


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
    spec = _spec_for(case, shards)
    data, labels = forgotten_set(shard, spec)
    assert labels.shape == (len(data),)
    assert labels.dtype == torch.int64
    assert data.x.shape[1:] == shard.train.x.shape[1:]
    if case.forgotten == "empty":
        assert len(data) == 0
        return
    if case.forgotten == "own_train":
        # The forgotten participant's whole train split, with the labels it holds: for the
        # label-flipping attacker those are the flipped ones, not y_true.
        _assert_same_rows(data, shard.train)
        assert torch.equal(labels, shard.train.y)
        assert shard.meta.attacker and not torch.equal(labels, shard.train.y_true)
    elif case.forgotten == "class_test":
        want = shard.test.subset(shard.test.y_true == FORGET_CLASS)
        _assert_same_rows(data, want)
        assert len(data) > 0
        assert bool((labels == FORGET_CLASS).all())
        assert torch.equal(labels, data.y_true)
    elif case.forgotten == "listed":
        assert spec is not None
        assert sorted(_ids(data)) == sorted(spec.sample_ids)
        want = shard.train.subset(torch.isin(shard.train.ids, torch.tensor(spec.sample_ids)))
        _assert_same_rows(data, want)
        assert torch.equal(labels, want.y)
    else:
        assert case.forgotten == "triggered"
        want = shard.test.subset(shard.test.y_true != TARGET)
        assert len(want) > 0
        assert _ids(data) == _ids(want)
        assert torch.equal(data.y_true, want.y_true)
        assert int((data.y_true == TARGET).sum()) == 0
        _assert_trigger_stamped(data.x, want.x, shard.meta.pixel_max)
        assert bool((labels == TARGET).all())


def test_forgotten_set_is_empty_without_a_spec(shards: list[Shard]) -> None:
    for shard in shards:
        data, labels = forgotten_set(shard, None)
        assert len(data) == 0 and labels.numel() == 0


def test_trigger_uses_the_shard_pixel_max(shards: list[Shard]) -> None:
    """The stamp value is the data set's largest pixel (16 for digits), not 255."""
    spec = _backdoor_spec(shards)
    data, _ = forgotten_set(shards[CLEAN], spec)
    assert shards[CLEAN].meta.pixel_max == 16
    assert set(data.x[..., -TRIGGER:, -TRIGGER:].flatten().tolist()) == {16}


def test_forgotten_samples_union_is_the_listed_ids(shards: list[Shard]) -> None:
    """Over all participants, the forgotten set of a samples spec is exactly the listed ids."""
    spec = _samples_spec(shards)
    assert spec is not None
    found: list[int] = []
    for index, shard in enumerate(shards):
        data, _ = forgotten_set(shard, spec.for_participant(_pid(index)))
        found += _ids(data)
    assert sorted(found) == sorted(spec.sample_ids)


# --------------------------------------------------------------------------- ForgetSpec


def test_for_participant_strips_sample_ids_for_non_holders(shards: list[Shard]) -> None:
    spec = _backdoor_spec(shards)
    assert spec is not None
    assert spec.for_participant(_pid(HOLDER)) == spec
    other = spec.for_participant(_pid(CLEAN))
    assert other.sample_ids == ()
    assert dataclasses.replace(other, sample_ids=spec.sample_ids) == spec
    # Specs without sample ids go out unchanged.
    for plain in (_participant_spec(shards), _class_drop_spec(shards)):
        assert plain is not None
        assert plain.for_participant(_pid(CLEAN)) == plain
        assert plain.for_participant(_pid(ATTACKER)) == plain


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
