"""Applying a decoded adapter file ("fused-adapter-file-v1", see `adapter_file`).

`apply_adapter_file` builds a new state dict (the input is untouched). `merge_into` and
`unmerge` switch an unlearning on and off in a live model or state dict, in place, like PEFT's
merge/unmerge: `merge_into` saves the values it overwrites and `unmerge` writes them back, so
the original bits return exactly. Every target is checked before anything is written, so a
mismatch (missing tensor, other shape or dtype) raises `AdapterFileError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from fused.common.codecs.adapter_file import AdapterFile, AdapterFileError, Patch

__all__ = ["Saved", "apply_adapter_file", "merge_into", "unmerge"]


@dataclass(frozen=True)
class Saved:
    """What `merge_into` overwrote: per tensor, the positions and their previous values, in
    the order written (`unmerge` restores in reverse, which is right even for tied tensors)."""

    patches: Mapping[str, Patch]


def _check(state: Mapping[str, torch.Tensor], patches: Mapping[str, Patch]) -> None:
    for name, patch in patches.items():
        if name not in state:
            raise AdapterFileError(f"tensor {name!r}: not in the model")
        target = state[name]
        if tuple(target.shape) != patch.shape:
            raise AdapterFileError(
                f"tensor {name!r}: the model's shape {list(target.shape)} differs from the "
                f"file's {list(patch.shape)}"
            )
        if target.dtype != patch.values.dtype:
            raise AdapterFileError(
                f"tensor {name!r}: the model's dtype {target.dtype} differs from the file's "
                f"{patch.values.dtype}"
            )


def _write(target: torch.Tensor, patch: Patch) -> torch.Tensor:
    """Assign ``patch`` into ``target`` in place; return the values it replaced."""
    positions = patch.positions.to(target.device)
    values = patch.values.to(target.device)
    with torch.no_grad():
        plain = target.detach()  # shares storage: parameters are written in place too
        if plain.is_contiguous():
            flat = plain.view(-1)
            old = flat[positions].clone()
            flat[positions] = values
        else:  # flat positions are row-major: address them by coordinates instead
            where = torch.unravel_index(positions, plain.shape)
            old = plain[where].clone()
            plain[where] = values
    return old


def apply_adapter_file(
    state: Mapping[str, torch.Tensor], f: AdapterFile
) -> dict[str, torch.Tensor]:
    """A new mapping: patched tensors are new; every other entry is the input tensor itself."""
    _check(state, f.patches)
    out = dict(state)
    for name, patch in f.patches.items():
        copy = state[name].detach().clone(memory_format=torch.contiguous_format)
        _write(copy, patch)
        out[name] = copy
    return out


def _tensors(module_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(module_or_state, nn.Module):
        # keep_vars: the parameters and buffers themselves, not detached copies of the dict.
        return dict(module_or_state.state_dict(keep_vars=True))
    return dict(module_or_state)


def merge_into(module_or_state: nn.Module | Mapping[str, torch.Tensor], f: AdapterFile) -> Saved:
    """Write the file's values into the model's own tensors; return what `unmerge` needs."""
    state = _tensors(module_or_state)
    _check(state, f.patches)
    saved: dict[str, Patch] = {}
    for name, patch in f.patches.items():
        old = _write(state[name], patch)
        saved[name] = Patch(patch.shape, patch.positions, old.cpu())
    return Saved(MappingProxyType(saved))


def unmerge(module_or_state: nn.Module | Mapping[str, torch.Tensor], saved: Saved) -> None:
    """Write back the values `merge_into` replaced: the tensors regain their exact bits."""
    state = _tensors(module_or_state)
    _check(state, saved.patches)
    for name, patch in reversed(list(saved.patches.items())):
        _write(state[name], patch)
