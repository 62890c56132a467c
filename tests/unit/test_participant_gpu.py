"""Training and evaluation on a CUDA device, full and mixed precision. Skipped without one.

GPU kernels are not bit-identical to CPU ones (other reduction orders, TF32), so results are
compared with a tolerance; what must hold exactly is the contract with the coordinator: weights
come back as CPU float32 tensors under the same names, and the model returns to the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fused.common.ml.adapters import adapter_values, attach_adapter, build_layout
from fused.common.ml.data.tensors import TensorData
from fused.participant.training import (
    Hardware,
    TrainConfig,
    evaluate,
    resolve_hardware,
    train_local,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this host (torch.cuda.is_available())"
)

CPU = torch.device("cpu")
CFG = TrainConfig(local_epochs=3, lr=0.05, batch_size=16, seed=11)
CLASSES = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, CLASSES)
    )


def _data(n_per_class: int = 40) -> TensorData:
    """8x8 images where class c lights up row c: learnable in a few epochs."""
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for c in range(CLASSES):
        x = torch.randint(0, 4, (n_per_class, 1, 8, 8), generator=g, dtype=torch.uint8)
        x[:, 0, c, :] = 16
        xs.append(x)
        ys.append(torch.full((n_per_class,), c))
    y = torch.cat(ys)
    n = int(y.shape[0])
    return TensorData(x=torch.cat(xs), y=y, y_true=y.clone(), ids=torch.arange(n), scale=1 / 16)


def _cuda(amp: bool) -> Hardware:
    hardware, notes = resolve_hardware("cuda", amp)
    assert not notes
    return hardware


def _assert_cpu_float32_like(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert state.keys() == ref.keys()
    for name, tensor in state.items():
        assert tensor.device == CPU, name
        assert tensor.dtype == ref[name].dtype and tensor.shape == ref[name].shape, name


def test_cuda_training_matches_cpu_within_tolerance() -> None:
    cpu_model, gpu_model = _model(), _model()
    cpu_stats = train_local(cpu_model, _data(), CFG, hardware=Hardware(CPU))
    gpu_stats = train_local(gpu_model, _data(), CFG, hardware=_cuda(amp=False))
    cpu_state, gpu_state = cpu_model.state_dict(), gpu_model.state_dict()
    _assert_cpu_float32_like(gpu_state, cpu_state)
    assert gpu_stats.steps == cpu_stats.steps
    assert gpu_stats.mean_loss == pytest.approx(cpu_stats.mean_loss, rel=1e-2)
    for name, tensor in cpu_state.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(gpu_state[name], tensor, rtol=1e-2, atol=1e-3)
        else:
            assert torch.equal(gpu_state[name], tensor), name
    cpu_counts = evaluate(cpu_model, _data(), CLASSES, hardware=Hardware(CPU))
    gpu_counts = evaluate(gpu_model, _data(), CLASSES, hardware=_cuda(amp=False))
    assert gpu_counts.total == cpu_counts.total
    assert abs(gpu_counts.accuracy - cpu_counts.accuracy) <= 0.02


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_learns_and_returns_float32(amp_dtype: torch.dtype) -> None:
    if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    hardware = Hardware(torch.device("cuda:0"), amp_dtype)
    model = _model()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    before = evaluate(model, _data(), CLASSES, hardware=hardware)
    stats = train_local(model, _data(), CFG, hardware=hardware)
    after = evaluate(model, _data(), CLASSES, hardware=hardware)
    _assert_cpu_float32_like(model.state_dict(), ref)
    assert torch.isfinite(torch.tensor(stats.mean_loss))
    assert after.accuracy > max(before.accuracy, 0.9)


def test_resolved_amp_matches_the_gpu() -> None:
    hardware = _cuda(amp=True)
    major, _ = torch.cuda.get_device_capability(0)
    assert hardware.amp_dtype == (torch.bfloat16 if major >= 8 else torch.float16)


def test_adapter_training_on_cuda_leaves_the_base_and_returns_cpu_values() -> None:
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    layout = build_layout({"1.weight": (32, 64), "4.weight": (CLASSES, 32)}, 0.1, seed=3)
    trainable = attach_adapter(model, layout)
    train_local(
        model,
        _data(),
        CFG,
        params=trainable.values(),
        freeze_norm_stats=True,
        hardware=_cuda(amp=False),
    )
    values = adapter_values(model)
    assert values.keys() == set(layout.names)
    assert all(v.device == CPU and v.dtype == torch.float32 for v in values.values())
    assert any(bool(v.abs().sum() > 0) for v in values.values())
    state = model.state_dict()
    for name, tensor in base.items():
        key = name if name in state else name.replace("weight", "parametrizations.weight.original")
        assert state[key].device == CPU and torch.equal(state[key], tensor), name
