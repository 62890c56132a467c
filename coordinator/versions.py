"""Model weights as artifacts and model versions as records."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import torch

from fused.common.codecs.tensor_codec import TensorSchema, decode_tensors, encode_tensors
from fused.common.domain.records import JobKind
from fused.common.domain.specs import TrainingSpec
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.state import ModelVersion, StateStore

ACTIVE_VERSION_KEY = "active_version"


async def save_weights(
    artifacts: ArtifactStore, state: Mapping[str, torch.Tensor], model: str
) -> str:
    """Store weights as a safetensors artifact; returns its sha256."""
    data = await asyncio.to_thread(encode_tensors, state, {"model": model})
    return await asyncio.to_thread(artifacts.put_bytes, data)


async def load_weights(
    artifacts: ArtifactStore, digest: str, schema: TensorSchema | None = None
) -> dict[str, torch.Tensor]:
    data = await asyncio.to_thread(artifacts.get_bytes, digest)
    tensors, _ = await asyncio.to_thread(decode_tensors, data, schema=schema)
    return tensors


def active_version(store: StateStore) -> ModelVersion | None:
    version_id = store.get_setting(ACTIVE_VERSION_KEY)
    return store.get_model_version(version_id) if version_id else None


def set_active(store: StateStore, version_id: str) -> None:
    store.set_setting(ACTIVE_VERSION_KEY, version_id)


def lineage(store: StateStore, version: ModelVersion) -> list[ModelVersion]:
    """`version` and its ancestors, newest first."""
    chain = [version]
    while chain[-1].parent_id is not None:
        parent = store.get_model_version(chain[-1].parent_id)
        if parent is None or parent in chain:
            break
        chain.append(parent)
    return chain


def original_training(store: StateStore, version: ModelVersion) -> TrainingSpec | None:
    """The spec of the training that began `version`'s chain (its oldest version a training
    job produced); None when no training job made one (weights imported some other way)."""
    for ancestor in reversed(lineage(store, version)):
        job = store.get_job(ancestor.job_id) if ancestor.job_id else None
        if job is not None and job.kind == JobKind.TRAIN:
            return TrainingSpec.from_dict(
                {k: v for k, v in job.spec.items() if k in _TRAINING_KEYS}
            )
    return None


_TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainingSpec)}
