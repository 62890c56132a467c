"""A model's tensor schema (names, shapes, dtypes, which tensors are parameters FUSED may adapt)
they serve, and what a coordinator can check without importing the workload's code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TensorEntry:
    name: str  # state_dict key
    shape: tuple[int, ...]
    dtype: str  # torch dtype without the "torch." prefix, e.g. "float32"
    parameter: bool = True  # a trainable parameter (False: a buffer such as running_mean)
    adaptable: bool = True  # a parameter the workload lets FUSED adapt

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def schema_of_model(
    model: nn.Module, adaptable: Callable[[str], bool] = lambda name: True
) -> tuple[TensorEntry, ...]:
    """The schema of a model's state dict, sorted by name so that key order never changes it."""
    params = {name for name, _ in model.named_parameters()}
    return tuple(
        TensorEntry(
            name,
            tuple(int(d) for d in t.shape),
            str(t.dtype).removeprefix("torch."),
            parameter=name in params,
            adaptable=name in params and adaptable(name),
        )
        for name, t in sorted(model.state_dict().items())
    )


def canonical_json(schema: tuple[TensorEntry, ...]) -> str:
    """One spelling per schema: sorted entries, no whitespace, ASCII only."""
    rows = [dataclasses.asdict(e) | {"shape": list(e.shape)} for e in schema]
    return json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


MAX_SCHEMA_BYTES = 1 << 20  # a schema is names and shapes: 1 MiB holds ~10,000 tensors


def parse_schema(text: bytes) -> tuple[TensorEntry, ...]:
    """A schema from its canonical JSON (as a participant declares it); ValueError says what
    is wrong. Re-encoding must give the same bytes, so the digest names exactly one schema."""
    if len(text) > MAX_SCHEMA_BYTES:
        raise ValueError(f"tensor schema of {len(text)} bytes exceeds {MAX_SCHEMA_BYTES}")
    try:
        rows = json.loads(text.decode("ascii"))
        schema = tuple(_entry(row) for row in rows)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"tensor schema is not a list of tensor entries: {exc}") from exc
    if canonical_json(schema).encode("ascii") != text:
        raise ValueError("tensor schema is not in canonical form (sorted, compact JSON)")
    return schema


def _entry(row: dict[str, object]) -> TensorEntry:
    shape = row["shape"]
    fields = (row["name"], row["dtype"], row["parameter"], row["adaptable"])
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TypeError(f"shape {shape!r} is not a list of sizes")
    if not all(isinstance(v, t) for v, t in zip(fields, (str, str, bool, bool), strict=True)):
        raise TypeError(f"entry {row!r} has fields of the wrong type")
    return TensorEntry(
        str(fields[0]), tuple(shape), str(fields[1]), bool(fields[2]), bool(fields[3])
    )


def state_matches(schema: tuple[TensorEntry, ...], state: Mapping[str, torch.Tensor]) -> str:
    """ "" when `state` has exactly the schema's names, shapes and dtypes, else the first
    difference, in words."""
    want = {e.name: e for e in schema}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for name, t in sorted(state.items()):
        e = want[name]
        dtype = str(t.dtype).removeprefix("torch.")
        if tuple(t.shape) != e.shape or dtype != e.dtype:
            return f"{name} is {dtype}{list(t.shape)}, the schema says {e.dtype}{list(e.shape)}"
    return ""


def schema_digest(schema: tuple[TensorEntry, ...]) -> str:
    """sha256 (hex) of the canonical JSON: equal digests mean interchangeable weights."""
    return hashlib.sha256(canonical_json(schema).encode("ascii")).hexdigest()
