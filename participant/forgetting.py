"""How a participant applies a forget spec to its own data: what it trains on, what it
reports as remaining test data, and what the forgotten set is."""

from __future__ import annotations

import dataclasses

import torch

from fused.common.domain.tasks import ForgetSet, ForgetSpec
from fused.common.ml.data.tensors import TensorData
from fused.participant.site import Site


def _empty(data: TensorData) -> TensorData:
    return data.subset(torch.zeros(len(data), dtype=torch.bool))


def _holds(data: TensorData, ids: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(data.ids, torch.tensor(ids, dtype=torch.int64))


def _num_classes(site: Site) -> int:
    """The class count a class request needs; a workload without classes refuses one."""
    if site.data.num_classes is None:
        raise ValueError(
            f"workload {site.workload.name!r} has no classes: it cannot forget a class "
            "(forget a participant or samples instead)"
        )
    return site.data.num_classes


def _without_ledger(site: Site, data: TensorData, excluded: ForgetSet, test: bool) -> TensorData:
    """`data` without what earlier requests forgot: nothing of a forgotten participant (it
    refuses training), no forgotten class, none of its own forgotten samples."""
    if excluded.excludes(site.participant_id):
        if not test:
            raise ValueError(
                f"{site.participant_id} was forgotten (forget ledger): it takes no training "
                "task until an operator withdraws the request"
            )
        return _empty(data)
    keep = torch.ones(len(data), dtype=torch.bool)
    if excluded.classes:
        labels = data.y_true if test else data.y
        keep &= ~torch.isin(labels, torch.tensor(excluded.classes, dtype=labels.dtype))
    own = excluded.samples_of(site.participant_id)
    if own and not test:
        keep &= ~_holds(data, own)
    return data if bool(keep.all()) else data.subset(keep)


def remaining_train(
    site: Site, forget: ForgetSpec | None, seed: int, excluded: ForgetSet | None = None
) -> TensorData:
    """D_r on this participant: its training data without what the ledger and this request
    forget, or, with `relabel` (the research code's variant), with this request's samples
    relabelled to random other classes."""
    data = _without_ledger(site, site.data.train, excluded or ForgetSet(), test=False)
    if forget is None:
        return data
    me = site.participant_id
    if forget.paradigm == "participant":
        return _empty(data) if forget.participant_id == me else data
    if forget.paradigm == "samples":
        hit = _holds(data, forget.sample_ids) if forget.participant_id == me else None
    else:
        _num_classes(site)
        hit = data.y == forget.class_label
    if hit is not None and not forget.relabel:
        data, hit = data.subset(~hit), None
    elif hit is not None:
        n = _num_classes(site)
        gen = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, n, (len(data),), generator=gen)
        data = dataclasses.replace(data, y=torch.where(hit, (data.y + shift) % n, data.y))
    if forget.paradigm == "samples" and forget.trigger_size > 0:
        data = counter_trigger(site, data, forget.trigger_size, seed, hit)
    return data


COUNTER_TRIGGER_SHARE = 0.2


def counter_trigger(
    site: Site, data: TensorData, size: int, seed: int, skip: torch.Tensor | None
) -> TensorData:
    """A request that names its backdoor's trigger is unlearnt by every participant, not only
    the holder: a seeded share of the remaining samples gets the trigger stamped in and keeps
    its true label, so the federation's updates teach the model to ignore the trigger
    (`skip`: the holder's forgotten samples, which carry it already)."""
    gen = torch.Generator().manual_seed(seed + 1)
    pick = torch.rand(len(data), generator=gen) < COUNTER_TRIGGER_SHARE
    if skip is not None:
        pick &= ~skip
    if not bool(pick.any()):
        return data
    x = data.x.clone()
    x[pick] = site.workload.trigger(data.x[pick], size)
    return dataclasses.replace(data, x=x)


def forgotten_train(site: Site, forget: ForgetSpec) -> TensorData:
    """The training samples of this participant the request forgets, with the labels it
    trained on (a backdoor's target, a flipper's flipped labels): what a forget-aware selection
    rule measures. Empty when it holds none."""
    train = site.data.train
    if forget.paradigm == "participant":
        return train if forget.participant_id == site.participant_id else _empty(train)
    if forget.paradigm == "class":
        _num_classes(site)
        return train.subset(train.y == forget.class_label)
    if forget.participant_id != site.participant_id:
        return _empty(train)
    return train.subset(_holds(train, forget.sample_ids))


def remaining_test(
    site: Site, forget: ForgetSpec | None, excluded: ForgetSet | None = None
) -> TensorData:
    """The test data RA is measured on: without forgotten participants and classes."""
    data = _without_ledger(site, site.data.test, excluded or ForgetSet(), test=True)
    if forget is None:
        return data
    if forget.paradigm == "participant" and forget.participant_id == site.participant_id:
        return _empty(data)
    if forget.paradigm == "class":
        _num_classes(site)
        return data.subset(data.y_true != forget.class_label)
    return data


def forgotten_set(site: Site, forget: ForgetSpec | None) -> tuple[TensorData, torch.Tensor]:
    """This participant's part of the forgotten set and the labels FA counts as correct.

    participant: the forgotten participant's training data with the labels it holds (for a
    label-flipping attacker, the flipped ones); class: test samples of the class; samples with
    a trigger: triggered test inputs not of the target class (the workload stamps the trigger),
    counted as correct when the backdoor fires (attack success rate); samples without: the
    listed samples themselves.
    """
    me = site.participant_id
    train, test = site.data.train, site.data.test
    if forget is None:
        return _empty(test), test.y[:0]
    if forget.paradigm == "participant":
        data = train if forget.participant_id == me else _empty(train)
        return data, data.y
    if forget.paradigm == "class":
        _num_classes(site)
        data = test.subset(test.y_true == forget.class_label)
        return data, data.y_true
    if forget.trigger_size > 0:
        data = test.subset(test.y_true != forget.trigger_target)
        triggered = dataclasses.replace(data, x=site.workload.trigger(data.x, forget.trigger_size))
        return triggered, torch.full_like(data.y, forget.trigger_target)
    if forget.participant_id != me:
        return _empty(train), train.y[:0]
    data = train.subset(_holds(train, forget.sample_ids))
    return data, data.y
