"""Task execution on local data, apart from any RPC: weights in, weights or counts out. Every
function works through the site's workload: its model, loss, input step and metrics."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fused.common.domain.tasks import (
    AdapterRef,
    EvalOutcome,
    ForgetSet,
    ForgetSpec,
    SensitivityOutcome,
)
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import (
    AdapterLayout,
    adapter_values,
    attach_adapter,
    build_layout,
)
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.workloads import Workload
from fused.participant.forgetting import (
    forgotten_set,
    forgotten_train,
    remaining_test,
    remaining_train,
)
from fused.participant.site import Site
from fused.participant.training import TrainStats, score, train_local


def load_model(workload: Workload, weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The workload's model holding `weights` (its own initial values are overwritten)."""
    model = workload.make_model()
    model.load_state_dict(weights, strict=True)
    return model


def local_update(
    site: Site,
    weights: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    forget: ForgetSpec | None = None,
    excluded: ForgetSet | None = None,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """One participant's FedAvg step: train from the global weights, return the new ones."""
    model = load_model(site.workload, weights)
    data = remaining_train(site, forget, cfg.seed, excluded)
    stats = train_local(model, data, cfg, objective=site.workload)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


def local_sensitivity(
    site: Site,
    weights: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    excluded: ForgetSet | None = None,
    forget: ForgetSpec | None = None,
    forget_only: bool = False,
) -> SensitivityOutcome:
    """Critical layer identification: train one round, report sum |p_after - p_before| per
    adaptable parameter tensor (plain L1, no size normalisation), never the model itself.
    With `forget` (a forget-aware selection rule asks), the same again from the same weights
    on this participant's forgotten training data alone, if it holds any. `forget_only`:
    that measure alone (the model's training recorded the rest)."""
    distances: dict[str, float] = {}
    n = 0
    if not forget_only:
        data = remaining_train(site, None, cfg.seed, excluded)
        distances, n = _moved(site, weights, data, cfg)
    held = forgotten_train(site, forget) if forget is not None else None
    if held is None or len(held) == 0:
        return SensitivityOutcome(distances, n)
    forget_distances, n_forget = _moved(site, weights, held, cfg)
    return SensitivityOutcome(distances, n, forget_distances, n_forget)


def _moved(
    site: Site, weights: Mapping[str, torch.Tensor], data: TensorData, cfg: TrainConfig
) -> tuple[dict[str, float], int]:
    """Per adaptable tensor, sum |after - before| after one local round on `data`."""
    model = load_model(site.workload, weights)
    before = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if site.workload.adaptable(name)
    }
    stats = train_local(model, data, cfg, objective=site.workload)
    distances = {
        name: float((p.detach() - before[name]).abs().sum(dtype=torch.float64))
        for name, p in model.named_parameters()
        if name in before
    }
    return distances, stats.num_examples


def adapter_layout(workload: Workload, ref: AdapterRef) -> AdapterLayout:
    """Derive the mask locally from the seed and check it is the coordinator's."""
    model = workload.make_model()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    unknown = [name for name in ref.layers if name not in shapes]
    if unknown:
        raise ValueError(f"adapter names tensors the model lacks: {', '.join(unknown)}")
    fixed = [name for name in ref.layers if not workload.adaptable(name)]
    if fixed:
        raise ValueError(f"adapter names tensors the workload keeps fixed: {', '.join(fixed)}")
    layout = build_layout({name: shapes[name] for name in ref.layers}, ref.density, ref.mask_seed)
    if layout.digest != ref.mask_digest:
        raise ValueError(
            f"mask digest {layout.digest} differs from the coordinator's {ref.mask_digest}"
        )
    return layout


def local_adapter_update(
    site: Site,
    base: Mapping[str, torch.Tensor],
    layout: AdapterLayout,
    values: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    forget: ForgetSpec | None,
    excluded: ForgetSet | None = None,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """Train only the adapter values on the remaining data; the base stays frozen, norm
    statistics included."""
    model = load_model(site.workload, base)
    trainable = attach_adapter(model, layout, dict(values))
    data = remaining_train(site, forget, cfg.seed, excluded)
    stats = train_local(
        model,
        data,
        cfg,
        params=trainable.values(),
        freeze_norm_stats=True,
        objective=site.workload,
    )
    return adapter_values(model), stats


def local_evaluate(
    site: Site,
    weights: Mapping[str, torch.Tensor],
    forget: ForgetSpec | None = None,
    excluded: ForgetSet | None = None,
    layout: AdapterLayout | None = None,
    values: Mapping[str, torch.Tensor] | None = None,
) -> EvalOutcome:
    """Counts on the remaining test data and on this participant's part of the forgotten set.
    With `layout`, `weights` is the base and `values` its adapter: the same weights as merged
    (one index_add each), and the frozen prefix before the first adapted tensor is computed
    once for every round of the job that evaluates this base (participant.prefix)."""
    model = load_model(site.workload, weights)
    if layout is not None:
        attach_adapter(model, layout, None if values is None else dict(values))
    n, objective = site.buckets, site.workload
    test = remaining_test(site, forget, excluded)
    kept = score(model, test, n, objective=objective, losses=True)
    forgotten, labels = forgotten_set(site, forget)
    hit = score(model, forgotten, n, labels=labels, objective=objective, losses=True)
    return EvalOutcome(
        correct=tuple(kept.counts.correct),
        total=tuple(kept.counts.total),
        loss_sum=kept.counts.loss_sum,
        forget_correct=sum(hit.counts.correct),
        forget_total=hit.counts.num_examples,
        test_losses=tuple(kept.loss_histogram),
        forget_losses=tuple(hit.loss_histogram),
    )
