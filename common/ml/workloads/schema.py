"""A model's tensor schema (names, shapes, dtypes) and its digest: what participants will declare
they serve, and what a coordinator can check without importing the workload's code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorEntry:
    name: str  # state_dict key
    shape: tuple[int, ...]
    dtype: str  # torch dtype without the "torch." prefix, e.g. "float32"


def schema_of(state: Mapping[str, torch.Tensor]) -> tuple[TensorEntry, ...]:
    """The schema of a state dict, sorted by name so that key order never changes it."""
    return tuple(
        TensorEntry(name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in sorted(state.items())
    )


def canonical_json(schema: tuple[TensorEntry, ...]) -> str:
    """One spelling per schema: sorted entries, no whitespace, ASCII only."""
    rows = [{"dtype": e.dtype, "name": e.name, "shape": list(e.shape)} for e in schema]
    return json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def schema_digest(schema: tuple[TensorEntry, ...]) -> str:
    """sha256 (hex) of the canonical JSON: equal digests mean interchangeable weights."""
    return hashlib.sha256(canonical_json(schema).encode("ascii")).hexdigest()
