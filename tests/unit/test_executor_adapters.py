"""Adapter tasks on local data (participant/executor.py): the layout a task names, the
adapter update, and the frozen norm statistics while it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fused.common.domain.tasks import AdapterRef, ForgetSpec
from fused.common.ml.adapters import (
    AdapterLayout,
    attach_adapter,
    layout_for,
    merge_weights,
    zero_values,
)
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.shards import Shard, ShardMeta
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.models import init_model
from fused.common.ml.workloads import workload_for
from fused.participant.executor import (
    adapter_layout,
    load_model,
    local_adapter_update,
    local_evaluate,
    local_update,
)
from fused.participant.forgetting import remaining_train
from fused.participant.prefix import drop_kept
from fused.participant.site import shard_site
from fused.participant.training import TrainConfig, train_local
from tests.unit.test_executor import (
    CFG,
    CLEAN,
    CONFIG,
    FORGET_CLASS,
    MLP_LAYERS,
    NUM_CLASSES,
    Weights,
    assert_bit_equal,
    clone,
    mlp_layout,
)


@pytest.fixture(scope="module")
def shards() -> list[Shard]:
    return partition_source(load_digits_source(), CONFIG)


@pytest.fixture(scope="module")
def mlp_weights() -> Weights:
    return clone(init_model("mlp", NUM_CLASSES, seed=0).state_dict())


# --------------------------------------------------------------------------- adapter layout


def test_adapter_layout_matches_build_layout(mlp_weights: Weights) -> None:
    expected = mlp_layout(mlp_weights, density=0.1, seed=42)
    ref = AdapterRef(layers=MLP_LAYERS, density=0.1, mask_seed=42, mask_digest=expected.digest)
    layout = adapter_layout(workload_for("mlp", NUM_CLASSES), ref)
    assert layout == expected
    assert layout.names == tuple(sorted(MLP_LAYERS))
    assert dict(layout.shapes) == dict(expected.shapes)
    for name in layout.names:
        assert torch.equal(layout.indices[name], expected.indices[name])


def test_adapter_layout_rejects_a_wrong_digest(mlp_weights: Weights) -> None:
    other_seed = mlp_layout(mlp_weights, density=0.1, seed=43).digest
    for wrong in ("0" * 64, other_seed):
        ref = AdapterRef(layers=MLP_LAYERS, density=0.1, mask_seed=42, mask_digest=wrong)
        with pytest.raises(ValueError, match=wrong):
            adapter_layout(workload_for("mlp", NUM_CLASSES), ref)


@pytest.mark.parametrize("unknown", ["net.9.weight", "net.1.weight", "weight"])
def test_adapter_layout_names_unknown_layers(unknown: str, mlp_weights: Weights) -> None:
    ref = AdapterRef(
        layers=("net.0.weight", unknown),
        density=0.1,
        mask_seed=0,
        mask_digest=mlp_layout(mlp_weights).digest,
    )
    with pytest.raises(ValueError, match=unknown):
        adapter_layout(workload_for("mlp", NUM_CLASSES), ref)


# --------------------------------------------------------------------------- adapter update


def test_local_adapter_update_trains_values_and_leaves_the_base(
    shards: list[Shard], mlp_weights: Weights
) -> None:
    shard = shards[CLEAN]
    layout = mlp_layout(mlp_weights)
    base = clone(mlp_weights)
    start = zero_values(layout)
    spec = ForgetSpec("class", class_label=FORGET_CLASS)
    values, stats = local_adapter_update(shard_site(shard), base, layout, start, CFG, spec)
    assert_bit_equal(base, mlp_weights)  # base weights bit-for-bit unchanged
    assert all(not bool(v.any()) for v in start.values())  # the start values too
    assert stats.num_examples == len(remaining_train(shard_site(shard), spec, CFG.seed))
    assert stats.num_examples < len(shard.train)

    assert list(values) == list(layout.names)
    for name in layout.names:
        assert values[name].shape == (layout.indices[name].numel(),)
        assert values[name].dtype == torch.float32
        assert bool(values[name].isfinite().all())
    assert any(bool(v.any()) for v in values.values())

    # The merged weights differ from the base only at the mask positions of the layout.
    merged = merge_weights(base, layout, values)
    for name, tensor in merged.items():
        if name not in layout.names:
            assert torch.equal(tensor, base[name]), name
            continue
        changed = torch.nonzero((tensor != base[name]).flatten()).flatten()
        assert bool(torch.isin(changed, layout.indices[name]).all()), name

    # Serving the merged weights is the same model as the base with the adapter attached.
    x = shard.test.features()[:12]
    plain = load_model(workload_for("mlp", NUM_CLASSES), merged).eval()
    adapted = load_model(workload_for("mlp", NUM_CLASSES), base)
    attach_adapter(adapted, layout, values)
    adapted.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted(x), rtol=1e-5, atol=1e-6)
        baseline = load_model(workload_for("mlp", NUM_CLASSES), base).eval()(x)
    assert not torch.allclose(plain(x).detach(), baseline, atol=1e-6)


def test_local_adapter_update_continues_from_given_values(
    shards: list[Shard], mlp_weights: Weights
) -> None:
    shard = shards[CLEAN]
    layout = mlp_layout(mlp_weights)
    first, _ = local_adapter_update(
        shard_site(shard), mlp_weights, layout, zero_values(layout), CFG, None
    )
    given = clone(first)
    second, _ = local_adapter_update(shard_site(shard), mlp_weights, layout, given, CFG, None)
    assert_bit_equal(given, first)  # values passed in are not modified in place
    again, _ = local_adapter_update(
        shard_site(shard), mlp_weights, layout, zero_values(layout), CFG, None
    )
    assert_bit_equal(again, first)  # deterministic
    assert any(not torch.equal(second[n], first[n]) for n in layout.names)


def test_evaluating_base_plus_adapter_equals_the_merged_weights(
    shards: list[Shard], mlp_weights: Weights
) -> None:
    """The evaluation task of an adapter job attaches the adapter instead of merging it, so
    the frozen layers before it run once for every round: the counts are the merged model's,
    to the bit, the first time and when the kept prefix serves."""
    site = shard_site(shards[CLEAN])
    layout = layout_for(mlp_weights, ["net.4.weight", "net.2.weight"], 0.5, 3)
    gen = torch.Generator().manual_seed(4)
    values = {n: 0.3 * torch.randn(i.numel(), generator=gen) for n, i in layout.indices.items()}
    spec = ForgetSpec("class", class_label=FORGET_CLASS)
    merged = local_evaluate(site, merge_weights(mlp_weights, layout, values), spec)
    drop_kept()
    first = local_evaluate(site, mlp_weights, spec, layout=layout, values=values)
    kept = local_evaluate(site, mlp_weights, spec, layout=layout, values=values)
    assert first == merged and kept == merged
    assert merged != local_evaluate(site, mlp_weights, spec)  # the adapter does matter


# --------------------------------------------------------------------------- norm statistics


RESNET_LAYERS = ("fc.weight", "bn1.weight")
RESNET_CFG = TrainConfig(local_epochs=1, lr=0.01, batch_size=8, seed=0)


def _norm_buffers(weights: Weights) -> Weights:
    return {
        k: v
        for k, v in weights.items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@pytest.fixture(scope="module")
def image_shard() -> Shard:
    """16 random 3x32x32 uint8 images: enough for two ResNet-18 batches of 8."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(16, dtype=torch.int64) % NUM_CLASSES
    data = TensorData(x=x, y=y, y_true=y.clone(), ids=torch.arange(16), scale=1.0 / 255)
    meta = ShardMeta(
        participant_id="p0",
        dataset="cifar10",
        num_classes=NUM_CLASSES,
        input_shape=(3, 32, 32),
        scale=1.0 / 255,
        pixel_max=255,
        attacker=False,
        backdoor_ids=(),
        backdoor_target=0,
        trigger_size=1,
        seed=0,
        alpha=1.0,
    )
    return Shard(meta=meta, train=data, test=data)


@pytest.fixture(scope="module")
def resnet_weights() -> Weights:
    return clone(init_model("resnet18", NUM_CLASSES, seed=0).state_dict())


def _resnet_adapter_run(
    base: Weights, layout: AdapterLayout, shard: Shard, freeze: bool
) -> tuple[Weights, nn.Module]:
    """What local_adapter_update does, done by hand so the model's buffers can be inspected."""
    model = load_model(workload_for("resnet18", NUM_CLASSES), base)
    trainable = attach_adapter(model, layout, zero_values(layout))
    train_local(model, shard.train, RESNET_CFG, params=trainable.values(), freeze_norm_stats=freeze)
    return {n: p.detach().clone() for n, p in trainable.items()}, model


def test_adapter_update_freezes_norm_statistics(
    image_shard: Shard, resnet_weights: Weights
) -> None:
    base = clone(resnet_weights)
    stats_before = _norm_buffers(resnet_weights)
    assert stats_before  # ResNet-18 has BatchNorm running statistics
    layout = layout_for(base, RESNET_LAYERS, 0.05, 0)

    values, stats = local_adapter_update(
        shard_site(image_shard), base, layout, zero_values(layout), RESNET_CFG, None
    )
    assert_bit_equal(base, resnet_weights)
    assert stats.steps == 2
    assert any(bool(v.any()) for v in values.values())

    # The same training with norm layers in eval mode reproduces local_adapter_update exactly,
    # and leaves every running statistic (and the batch counter) bit-for-bit unchanged...
    frozen_values, frozen_model = _resnet_adapter_run(base, layout, image_shard, freeze=True)
    for name in layout.names:
        torch.testing.assert_close(values[name], frozen_values[name], rtol=1e-5, atol=1e-7)
    assert_bit_equal(_norm_buffers(clone(frozen_model.state_dict())), stats_before)

    # ...while letting BatchNorm use batch statistics trains different values: so
    # local_adapter_update really ran with the statistics frozen.
    live_values, live_model = _resnet_adapter_run(base, layout, image_shard, freeze=False)
    assert not all(
        torch.allclose(values[n], live_values[n], rtol=1e-3, atol=1e-6) for n in layout.names
    )
    live_stats = _norm_buffers(clone(live_model.state_dict()))
    assert not torch.equal(live_stats["bn1.running_mean"], stats_before["bn1.running_mean"])

    # A plain FedAvg step does move the running statistics.
    updated, _ = local_update(shard_site(image_shard), base, RESNET_CFG)
    assert_bit_equal(base, resnet_weights)
    moved = _norm_buffers(updated)
    for name in ("bn1.running_mean", "bn1.running_var", "layer4.1.bn2.running_var"):
        assert not torch.equal(moved[name], stats_before[name]), name
    assert int(moved["bn1.num_batches_tracked"]) == int(stats_before["bn1.num_batches_tracked"]) + 2
