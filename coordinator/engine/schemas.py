"""The tensor schema a job works from: declared by the participants at registration, stored
as an artifact under its digest. The coordinator never builds a model: sizes, the tensors a
ranking may choose and the check of given weights all come from here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import torch

from fused.common.ml.schema import TensorEntry, parse_schema, state_matches
from fused.coordinator.artifacts import ArtifactStore, MissingArtifactError
from fused.coordinator.engine.context import JobFailed

Schema = tuple[TensorEntry, ...]


async def load_schema(artifacts: ArtifactStore, digest: str) -> Schema:
    """The schema stored under `digest`; a job fails if it is gone (no participant serving it
    registered since the state was restored)."""
    try:
        data = await asyncio.to_thread(artifacts.get_bytes, digest)
    except MissingArtifactError:
        raise JobFailed(
            f"tensor schema {digest[:12]} is not stored; it returns when a participant "
            "serving it registers"
        ) from None
    return parse_schema(data)


def num_parameters(schema: Schema) -> int:
    """Trainable parameters of the model (buffers such as running means excluded)."""
    return sum(e.numel for e in schema if e.parameter)


def adaptable_sizes(schema: Schema) -> dict[str, int]:
    """Parameter tensor -> its size, for the tensors the workload lets FUSED adapt."""
    return {e.name: e.numel for e in schema if e.adaptable}


def check_weights(schema: Schema, weights: Mapping[str, torch.Tensor], what: str) -> None:
    """JobFailed unless `weights` has exactly the schema's names, shapes and dtypes."""
    difference = state_matches(schema, weights)
    if difference:
        raise JobFailed(f"{what} do not fit the participants' model: {difference}")
