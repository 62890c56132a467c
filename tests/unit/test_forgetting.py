"""How a participant applies a forget spec to its shard (participant/forgetting.py), on real
digits shards: p0 is a label-flipping attacker, p1 holds a backdoor, p2 is clean."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import Shard
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.data.tensors import TensorData
from fused.participant.forgetting import COUNTER_TRIGGER_SHARE, remaining_test, remaining_train
from fused.participant.site import Site, shard_site

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


def _clones(shards: list[Shard]) -> list[dict[str, torch.Tensor]]:
    return [
        {
            f"{split}.{name}": getattr(getattr(shard, split), name).clone()
            for split in ("train", "test")
            for name in ("x", "y", "y_true", "ids")
        }
        for shard in shards
    ]


@contextlib.contextmanager
def unchanged(shards: list[Shard]) -> Iterator[None]:
    """On leaving, `shards` are still bit-for-bit what they were on entering."""
    before = _clones(shards)
    yield
    for was, now in zip(before, _clones(shards), strict=True):
        for key, tensor in was.items():
            assert torch.equal(tensor, now[key]), key


def digits_shards() -> list[Shard]:
    result = partition_source(load_digits_source(), CONFIG)
    # Preconditions the cases below rely on.
    assert result[ATTACKER].meta.attacker
    assert len(result[HOLDER].meta.backdoor_ids) == BACKDOOR_COUNT
    for shard in result:
        assert int((shard.train.y == FORGET_CLASS).sum()) > 0
        assert int((shard.test.y_true == FORGET_CLASS).sum()) > 0
    return result


@pytest.fixture(scope="module")
def shards() -> list[Shard]:
    return digits_shards()


@pytest.fixture(autouse=True)
def _shards_untouched(shards: list[Shard]) -> Iterator[None]:
    """After every test, the module-scoped shards are still bit-for-bit what they were."""
    with unchanged(shards):
        yield


# --------------------------------------------------------------------------- specs


def pid(index: int) -> str:
    return f"p{index}"


def listed_ids(shards: list[Shard]) -> tuple[int, ...]:
    """A few of the clean participant's train samples (the samples paradigm without trigger)."""
    return tuple(int(i) for i in shards[CLEAN].train.ids[::50])


SpecFactory = Callable[[list[Shard]], ForgetSpec | None]


def no_spec(shards: list[Shard]) -> ForgetSpec | None:
    return None


def participant_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("participant", participant_id=pid(ATTACKER))


def class_drop_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("class", class_label=FORGET_CLASS)


def class_relabel_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)


def samples_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec("samples", participant_id=pid(CLEAN), sample_ids=listed_ids(shards))


def backdoor_spec(shards: list[Shard]) -> ForgetSpec | None:
    return ForgetSpec(
        "samples",
        participant_id=pid(HOLDER),
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
    Case("none", no_spec, HOLDER, "all", "all", "empty"),
    Case("participant-forgotten", participant_spec, ATTACKER, "none", "none", "own_train"),
    Case("participant-other", participant_spec, CLEAN, "all", "all", "empty"),
    Case(
        "class-drop-attacker", class_drop_spec, ATTACKER, "drop_class", "drop_class", "class_test"
    ),
    Case("class-drop-clean", class_drop_spec, CLEAN, "drop_class", "drop_class", "class_test"),
    Case("class-relabel", class_relabel_spec, CLEAN, "relabel", "drop_class", "class_test"),
    Case("samples-holder", samples_spec, CLEAN, "drop_listed", "all", "listed"),
    Case("samples-non-holder", samples_spec, HOLDER, "all", "all", "empty"),
    Case("backdoor-holder", backdoor_spec, HOLDER, "drop_listed", "all", "triggered"),
    Case("backdoor-non-holder", backdoor_spec, ATTACKER, "all", "all", "triggered"),
    Case("backdoor-clean", backdoor_spec, CLEAN, "all", "all", "triggered"),
]
CASE_IDS = [c.id for c in CASES]


def spec_for(case: Case, shards: list[Shard]) -> ForgetSpec | None:
    spec = case.spec(shards)
    return None if spec is None else spec.for_participant(pid(case.viewer))


def mask_ids(data: TensorData, mask: torch.Tensor) -> list[int]:
    return [int(i) for i in data.ids[mask]]


def ids_of(data: TensorData) -> list[int]:
    return [int(i) for i in data.ids]


def assert_same_rows(got: TensorData, want: TensorData) -> None:
    """Same samples, same order, same pixels and labels."""
    assert got.ids.tolist() == want.ids.tolist()
    assert torch.equal(got.x, want.x)
    assert torch.equal(got.y, want.y)
    assert torch.equal(got.y_true, want.y_true)
    assert got.scale == want.scale


def assert_counter_triggered(
    got: TensorData, want: TensorData, site: Site, spec: ForgetSpec
) -> None:
    """A request naming its trigger: the same samples and labels, with about a fifth of them
    stamped with the trigger (true labels kept), every participant alike."""
    assert got.ids.tolist() == want.ids.tolist()
    assert torch.equal(got.y, want.y) and torch.equal(got.y_true, want.y_true)
    changed = (got.x != want.x).flatten(1).any(dim=1)
    share = float(changed.float().mean())
    assert abs(share - COUNTER_TRIGGER_SHARE) < 0.1, share
    stamped = site.workload.trigger(want.x[changed], spec.trigger_size)
    assert torch.equal(got.x[changed], stamped)


# --------------------------------------------------------------------------- remaining_train


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_remaining_train(case: Case, shards: list[Shard]) -> None:
    shard = shards[case.viewer]
    spec = spec_for(case, shards)
    got = remaining_train(shard_site(shard), spec, seed=SEED)
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
    assert ids_of(got) == mask_ids(train, expected_kept)
    assert got.x.shape[1:] == train.x.shape[1:]
    if case.train == "relabel":
        assert torch.equal(got.x, train.x)
        assert torch.equal(got.y_true, train.y_true)
        assert not torch.equal(got.y, train.y)
    elif spec is not None and spec.trigger_size > 0:
        assert_counter_triggered(got, train.subset(expected_kept), shard_site(shard), spec)
    else:
        assert_same_rows(got, train.subset(expected_kept))
    if case.train == "drop_class":
        assert int((got.y == FORGET_CLASS).sum()) == 0
        # Nothing but class FORGET_CLASS is removed: every other sample is still there.
        assert len(got) == len(train) - int((train.y == FORGET_CLASS).sum())
    if case.train == "drop_listed":
        assert spec is not None
        assert len(spec.sample_ids) > 0
        assert set(spec.sample_ids) <= set(ids_of(train))  # the holder really held them
        assert len(got) == len(train) - len(spec.sample_ids)
        assert not set(spec.sample_ids) & set(ids_of(got))


def test_forgotten_participant_trains_on_nothing(shards: list[Shard]) -> None:
    for index in range(3):
        spec = ForgetSpec("participant", participant_id=pid(index))
        assert len(remaining_train(shard_site(shards[index]), spec, seed=0)) == 0
        for other in range(3):
            if other != index:
                assert len(remaining_train(shard_site(shards[other]), spec, seed=0)) == len(
                    shards[other].train
                )


def test_samples_paradigm_only_the_holder_drops_even_with_full_spec(shards: list[Shard]) -> None:
    """A non-holder that got the unstripped spec still keeps its data (ids are not its own)."""
    spec = samples_spec(shards)
    assert spec is not None
    for index in (ATTACKER, HOLDER):
        got = remaining_train(shard_site(shards[index]), spec, seed=0)
        assert ids_of(got) == ids_of(shards[index].train)


# --------------------------------------------------------------------------- relabelling


@pytest.mark.parametrize("viewer", [ATTACKER, HOLDER, CLEAN])
def test_relabel_changes_exactly_the_class_labels(viewer: int, shards: list[Shard]) -> None:
    shard = shards[viewer]
    spec = ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)
    got = remaining_train(shard_site(shard), spec, seed=SEED)
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
    a = remaining_train(shard_site(shard), spec, seed=SEED)
    b = remaining_train(shard_site(shard), spec, seed=SEED)
    c = remaining_train(shard_site(shard), spec, seed=SEED + 1)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    # The seed only matters for relabelling: dropping is seed-independent.
    drop = ForgetSpec("class", class_label=FORGET_CLASS)
    assert ids_of(remaining_train(shard_site(shard), drop, 1)) == ids_of(
        remaining_train(shard_site(shard), drop, 2)
    )


def test_samples_relabel_changes_exactly_the_listed_labels_at_the_holder(
    shards: list[Shard],
) -> None:
    spec = backdoor_spec(shards)
    assert spec is not None
    spec = dataclasses.replace(spec, relabel=True)
    holder = shards[HOLDER].train
    got = remaining_train(shard_site(shards[HOLDER]), spec, seed=SEED)
    listed = torch.isin(holder.ids, torch.tensor(spec.sample_ids))
    assert int(listed.sum()) == BACKDOOR_COUNT
    assert torch.equal(got.ids, holder.ids)
    assert torch.equal(got.x[listed], holder.x[listed])  # they carry the trigger already
    assert torch.equal(got.y_true, holder.y_true)
    assert torch.equal(got.y != holder.y, listed)  # every listed label moves, nothing else
    assert int(got.y.min()) >= 0 and int(got.y.max()) < NUM_CLASSES
    assert torch.equal(got.y, remaining_train(shard_site(shards[HOLDER]), spec, seed=SEED).y)
    for index in (ATTACKER, CLEAN):  # the others keep every sample and label (counter-trigger)
        site = shard_site(shards[index])
        other = remaining_train(site, spec.for_participant(pid(index)), seed=SEED)
        assert_counter_triggered(other, shards[index].train, site, spec)


def test_relabel_leaves_the_global_rng_alone(shards: list[Shard]) -> None:
    spec = ForgetSpec("class", class_label=FORGET_CLASS, relabel=True)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    remaining_train(shard_site(shards[CLEAN]), spec, seed=SEED)
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------- remaining_test


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_remaining_test(case: Case, shards: list[Shard]) -> None:
    shard = shards[case.viewer]
    got = remaining_test(shard_site(shard), spec_for(case, shards))
    test = shard.test
    expected_kept = {
        "all": torch.ones(len(test), dtype=torch.bool),
        "none": torch.zeros(len(test), dtype=torch.bool),
        "drop_class": test.y_true != FORGET_CLASS,
    }[case.test]
    assert_same_rows(got, test.subset(expected_kept))
    if case.test == "drop_class":
        assert int((got.y_true == FORGET_CLASS).sum()) == 0
        assert len(got) == len(test) - int((test.y_true == FORGET_CLASS).sum())
