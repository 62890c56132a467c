"""FUSED sparse adapters: reproducible masks, functional merging and a reversible wrapper.

An adapter adds trainable values at a random sparse subset (density rho) of the positions of a
few selected parameter tensors of a frozen base model: ``W = W_base + scatter(mask, A)``. The
base tensors are never modified, so removing the adapter restores the base model bit for bit.

Masks are drawn from a counter-based bit generator (Philox4x64) keyed by the tensor's name and
the seed, and selected by integer comparison of its raw 64-bit output, so every participant and
the coordinator derive identical masks on any machine; ``AdapterLayout.digest`` lets them check.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "AdapterLayout",
    "SparseDelta",
    "adapter_values",
    "attach_adapter",
    "build_layout",
    "check_values",
    "frozen_norm_stats",
    "layout_for",
    "mask_indices",
    "merge_adapter",
    "merge_weights",
    "remove_adapter",
    "zero_values",
]

_TWO_64 = 1 << 64
_CHUNK = 1 << 20  # raw draws per batch: bounds memory for large tensors
_DIGEST_TAG = b"fused-adapter-mask-v1\0"
# Attribute on an adapted model remembering its parameters' requires_grad flags before attach.
_FLAGS_ATTR = "_fused_adapter_requires_grad"


# --------------------------------------------------------------------------- masks


def _check_density(density: float) -> None:
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise ValueError(f"density must be a number, got {type(density).__name__}")
    if not (math.isfinite(density) and 0.0 < density <= 1.0):
        raise ValueError(f"density must satisfy 0 < density <= 1, got {density!r}")


def _threshold(density: float) -> int:
    """floor(density * 2**64), exact: the float is converted to a Fraction (its exact binary
    value), so no floating-point rounding can differ between machines. 1.0 gives 2**64."""
    return math.floor(Fraction(density) * _TWO_64)


def _philox(name: str, seed: int) -> np.random.Philox:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    key = np.frombuffer(digest[:16], dtype="<u8").astype(np.uint64)  # 128-bit key
    return np.random.Philox(key=key)


def mask_indices(name: str, numel: int, density: float, seed: int) -> torch.Tensor:
    """Sorted int64 flat positions of ``name``'s adapter mask.

    Position i is selected iff raw[i] < floor(density * 2**64), where raw is the uint64 stream
    of Philox keyed by sha256(f"{seed}:{name}")[:16]. If nothing is selected (tiny tensors), the
    position with the smallest raw value is taken, so every mask has at least one position.
    """
    _check_density(density)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 1:
        raise ValueError(f"tensor {name!r}: numel must be a positive integer, got {numel!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if _threshold(density) >= _TWO_64:
        return torch.arange(numel, dtype=torch.int64)
    threshold = np.uint64(_threshold(density))
    generator = _philox(name, seed)
    chunks: list[npt.NDArray[np.int64]] = []
    argmin, minimum = 0, _TWO_64
    for start in range(0, numel, _CHUNK):
        raw = generator.random_raw(min(_CHUNK, numel - start))
        chunks.append(np.flatnonzero(raw < threshold) + start)
        low = int(np.argmin(raw))
        if int(raw[low]) < minimum:
            argmin, minimum = start + low, int(raw[low])
    selected = np.concatenate(chunks).astype(np.int64)
    if selected.size == 0:
        selected = np.array([argmin], dtype=np.int64)
    return torch.from_numpy(selected)


# --------------------------------------------------------------------------- layout


def _mask_digest(
    names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], indices: Mapping[str, torch.Tensor]
) -> str:
    """sha256 over length-prefixed names, shapes and little-endian int64 indices."""
    h = hashlib.sha256(_DIGEST_TAG)
    h.update(struct.pack("<Q", len(names)))
    for name in names:
        name_bytes = name.encode("utf-8")
        shape = shapes[name]
        h.update(struct.pack("<Q", len(name_bytes)) + name_bytes)
        h.update(struct.pack(f"<Q{len(shape)}Q", len(shape), *shape))
        raw = indices[name].numpy().astype("<i8", copy=False).tobytes()
        h.update(struct.pack("<Q", len(raw)) + raw)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class AdapterLayout:
    """Which positions of which tensors carry adapter values. Build with `build_layout`.

    Two layouts are equal iff their digests, densities and seeds are equal.
    """

    names: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    indices: Mapping[str, torch.Tensor] = field(repr=False)
    density: float
    seed: int
    digest: str

    @property
    def num_values(self) -> int:
        """Total number of adapter values (masked positions) over all tensors."""
        return sum(int(idx.numel()) for idx in self.indices.values())

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdapterLayout):
            return NotImplemented
        return (self.digest, self.density, self.seed) == (other.digest, other.density, other.seed)

    def __hash__(self) -> int:
        return hash((self.digest, self.density, self.seed))


def build_layout(shapes: Mapping[str, Sequence[int]], density: float, seed: int) -> AdapterLayout:
    """The layout adapting every tensor in ``shapes`` at the given density and seed."""
    _check_density(density)
    if not shapes:
        raise ValueError("an adapter layout needs at least one tensor")
    names = tuple(sorted(shapes))
    fixed: dict[str, tuple[int, ...]] = {}
    indices: dict[str, torch.Tensor] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        shape = tuple(int(d) for d in shapes[name])
        if any(d < 0 for d in shape):
            raise ValueError(f"tensor {name!r}: invalid shape {list(shape)}")
        fixed[name] = shape
        indices[name] = mask_indices(name, math.prod(shape), density, seed)
    return AdapterLayout(
        names=names,
        shapes=MappingProxyType(fixed),
        indices=MappingProxyType(indices),
        density=float(density),
        seed=seed,
        digest=_mask_digest(names, fixed, indices),
    )


def layout_for(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    names: Iterable[str],
    density: float,
    seed: int,
) -> AdapterLayout:
    """`build_layout` with the shapes of ``names`` taken from a model's parameters or a
    state dict."""
    if isinstance(model_or_state, nn.Module):
        available = {n: tuple(p.shape) for n, p in model_or_state.named_parameters()}
    else:
        available = {n: tuple(t.shape) for n, t in model_or_state.items()}
    wanted = sorted(set(names))
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ValueError(f"unknown tensor(s) {unknown}; the model has no such parameter")
    return build_layout({n: available[n] for n in wanted}, density, seed)


# --------------------------------------------------------------------------- values


def zero_values(layout: AdapterLayout) -> dict[str, torch.Tensor]:
    """A zero adapter: one float32 vector per tensor, aligned with ``layout.indices``."""
    return {n: torch.zeros(layout.indices[n].numel(), dtype=torch.float32) for n in layout.names}


def check_values(layout: AdapterLayout, values: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless ``values`` has exactly one floating 1-D vector per layout
    tensor, of the mask's length."""
    missing = sorted(set(layout.names) - set(values))
    unexpected = sorted(set(values) - set(layout.names))
    if missing or unexpected:
        raise ValueError(
            f"adapter values do not match the layout: missing {missing}, unexpected {unexpected}"
        )
    for name in layout.names:
        value = values[name]
        expected = layout.indices[name].numel()
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"adapter values for {name!r} must be a floating tensor")
        if value.dim() != 1 or value.numel() != expected:
            raise ValueError(
                f"adapter values for {name!r}: expected shape [{expected}], got {list(value.shape)}"
            )


def merge_weights(
    base: Mapping[str, torch.Tensor],
    layout: AdapterLayout,
    values: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A new mapping: adapted tensors = base + values scattered at the mask; every other entry
    is the base tensor itself (not copied). ``base`` is never modified."""
    check_values(layout, values)
    merged = dict(base)
    for name in layout.names:
        if name not in base:
            raise ValueError(f"tensor {name!r} of the adapter layout is not in the base weights")
        weight = base[name]
        if tuple(weight.shape) != layout.shapes[name]:
            raise ValueError(
                f"tensor {name!r}: base shape {list(weight.shape)} differs from the layout's "
                f"{list(layout.shapes[name])}"
            )
        merged[name] = _scatter_add(weight, layout.indices[name], values[name])
    return merged


def _scatter_add(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    # One out-of-place index_add over the flat base: no dense delta, base left untouched.
    idx = indices.to(base.device)
    source = values.to(device=base.device, dtype=base.dtype)
    return base.flatten().index_add(0, idx, source).view(base.shape)


# --------------------------------------------------------------------------- module wrapper


class SparseDelta(nn.Module):
    """Parametrization ``base -> base + scatter(indices, values)``; only ``values`` trains."""

    indices: torch.Tensor

    def __init__(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        if indices.dim() != 1 or values.shape != indices.shape:
            raise ValueError(
                f"indices and values must be equal-length vectors, got {list(indices.shape)} "
                f"and {list(values.shape)}"
            )
        # Non-persistent: the mask is derived from the layout, not part of the state dict.
        self.register_buffer("indices", indices.to(torch.int64).clone(), persistent=False)
        self.values = nn.Parameter(values.detach().to(torch.float32).clone())

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        # The adapted weight is built once per call by a single index_add (the same operation
        # as `merge_weights`, so both give bit-identical weights).
        return _scatter_add(base, self.indices, self.values)


def _split(name: str) -> tuple[str, str]:
    module_name, _, tensor_name = name.rpartition(".")
    return module_name, tensor_name


def _adapted(model: nn.Module) -> list[tuple[str, nn.Module, str, SparseDelta]]:
    """(full name, owning module, tensor name, parametrization) of every adapted tensor."""
    found: list[tuple[str, nn.Module, str, SparseDelta]] = []
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        plists = module.parametrizations
        assert isinstance(plists, nn.ModuleDict)
        for tensor_name, plist in plists.items():
            assert isinstance(plist, parametrize.ParametrizationList)
            for p in plist.children():
                if isinstance(p, SparseDelta):
                    full = f"{prefix}.{tensor_name}" if prefix else tensor_name
                    found.append((full, module, tensor_name, p))
    return sorted(found, key=lambda item: item[0])


def attach_adapter(
    model: nn.Module,
    layout: AdapterLayout,
    values: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, nn.Parameter]:
    """Attach a sparse adapter (zero unless ``values`` given) to each layout tensor of
    ``model``, freeze every base parameter, and return the trainable values by tensor name."""
    if hasattr(model, _FLAGS_ATTR) or _adapted(model):
        raise ValueError("the model already carries an adapter; remove or merge it first")
    initial = zero_values(layout) if values is None else dict(values)
    check_values(layout, initial)
    params = dict(model.named_parameters())
    for name in layout.names:
        if name not in params:
            raise ValueError(f"model has no parameter {name!r}")
        if tuple(params[name].shape) != layout.shapes[name]:
            raise ValueError(
                f"parameter {name!r} has shape {list(params[name].shape)}, the layout expects "
                f"{list(layout.shapes[name])}"
            )
    object.__setattr__(model, _FLAGS_ATTR, {n: p.requires_grad for n, p in params.items()})
    for p in params.values():
        p.requires_grad_(False)
    trainable: dict[str, nn.Parameter] = {}
    try:
        for name in layout.names:
            module_name, tensor_name = _split(name)
            module = model.get_submodule(module_name)
            delta = SparseDelta(layout.indices[name], initial[name]).to(params[name].device)
            parametrize.register_parametrization(module, tensor_name, delta)
            trainable[name] = delta.values
    except BaseException:
        remove_adapter(model)  # leave the model as it was
        raise
    return trainable


def adapter_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the adapter values attached to ``model``, by tensor name."""
    return {name: p.values.detach().clone() for name, _, _, p in _adapted(model)}


def _restore_flags(model: nn.Module) -> None:
    flags: dict[str, bool] = getattr(model, _FLAGS_ATTR, {})
    for name, p in model.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])
    if hasattr(model, _FLAGS_ATTR):
        object.__delattr__(model, _FLAGS_ATTR)


def remove_adapter(model: nn.Module) -> None:
    """Drop the adapter: the original base parameter objects return untouched."""
    adapted = _adapted(model)
    if not adapted and not hasattr(model, _FLAGS_ATTR):
        raise ValueError("the model carries no adapter")
    for _, module, tensor_name, _ in adapted:
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
    _restore_flags(model)


def merge_adapter(model: nn.Module) -> None:
    """Bake base + delta into new plain parameters (the old base tensors are not mutated)."""
    adapted = _adapted(model)
    if not adapted:
        raise ValueError("the model carries no adapter")
    for _, module, tensor_name, _ in adapted:
        with torch.no_grad():
            merged = getattr(module, tensor_name).detach().clone()
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        setattr(module, tensor_name, nn.Parameter(merged))
    _restore_flags(model)


# --------------------------------------------------------------------------- norm statistics


def _tracks_running_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


@contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Put every normalisation layer with running statistics into eval mode for the duration,
    so its buffers (which the adapter cannot version) stay fixed; restore modes afterwards."""
    norms = [m for m in model.modules() if _tracks_running_stats(m)]
    modes = [m.training for m in norms]
    try:
        for m in norms:
            m.eval()
        yield model
    finally:
        for m, mode in zip(norms, modes, strict=True):
            m.train(mode)
