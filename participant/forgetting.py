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
        if forget.participant_id != me:
            return data
        hit = _holds(data, forget.sample_ids)
    else:
        _num_classes(site)
        hit = data.y == forget.class_label
    if not forget.relabel:
        return data.subset(~hit)
    n = _num_classes(site)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, n, (len(data),), generator=gen)
    return dataclasses.replace(data, y=torch.where(hit, (data.y + shift) % n, data.y))


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
