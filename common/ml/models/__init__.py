"""The built-in model architectures (mlp.py, lenet.py, resnet.py) and, for scripts written
before workloads, construction by name. Names resolve through the workload registry
(`fused.common.ml.workloads`), which is where the built-ins are declared."""

from __future__ import annotations

from torch import nn


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model (uses the global RNG; see `init_model` for a seeded one)."""
    # imported here: the workloads import this package's model files
    from fused.common.ml.workloads.registry import workload_for

    return workload_for(name, num_classes).make_model()


def init_model(name: str, num_classes: int, seed: int) -> nn.Module:
    """Build `name` with weights determined by `seed` alone; the global RNG state is unchanged."""
    from fused.common.ml.workloads.registry import workload_for

    return workload_for(name, num_classes).build_model(seed)


def default_model_for(dataset: str) -> str:
    from fused.common.ml.workloads.builtin import default_for

    return default_for(dataset)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["build_model", "count_parameters", "default_model_for", "init_model"]
