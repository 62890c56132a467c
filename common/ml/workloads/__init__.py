"""Workloads: model + data + loss behind one interface, resolved by name (see base.py)."""

from __future__ import annotations

from fused.common.ml.schema import (
    TensorEntry,
    canonical_json,
    parse_schema,
    schema_digest,
    schema_of_model,
    state_matches,
)
from fused.common.ml.workloads.base import (
    EvalCounts,
    LocalData,
    Workload,
    WorkloadError,
    WorkloadInfo,
)
from fused.common.ml.workloads.builtin import ImageClassification, default_for
from fused.common.ml.workloads.registry import (
    ENTRY_POINT_GROUP,
    clear_cache,
    resolve_workload,
    workload_for,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "EvalCounts",
    "ImageClassification",
    "LocalData",
    "TensorEntry",
    "Workload",
    "WorkloadError",
    "WorkloadInfo",
    "canonical_json",
    "clear_cache",
    "default_for",
    "parse_schema",
    "resolve_workload",
    "schema_digest",
    "schema_of_model",
    "state_matches",
    "workload_for",
]
