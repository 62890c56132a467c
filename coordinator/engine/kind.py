"""The interface of a job kind: how a start request becomes a stored spec, and how a job of
the kind runs from that spec (fresh or resumed). Kinds register in fused.coordinator.jobs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from fused.common.domain.records import JobKind, ModelVersion, VersionKind
from fused.common.domain.specs import SpecError
from fused.common.domain.version_meta import VersionMeta
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.evaluation import ModelInfo
from fused.coordinator.ids import new_id
from fused.coordinator.state import StateStore
from fused.coordinator.versions import set_active


@dataclass(frozen=True)
class JobResult:
    summary: str  # one line for operators: the job's reason when it completes
    details: dict[str, Any] = field(default_factory=dict)  # the job record's result


class JobKindHandler(ABC):
    kind: ClassVar[JobKind]
    resumable: ClassVar[bool]  # continues after a coordinator restart (else: fails)

    @abstractmethod
    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        """Check a start request against the store; returns the spec to store with the job.
        Raises SpecError with a message for the operator."""

    @abstractmethod
    async def run(self, ctx: JobContext, spec: dict[str, Any], resume: bool) -> JobResult:
        """Run the job from its stored spec; resuming, committed rounds are kept."""


class StartSpec(Protocol):
    def validate(self) -> None: ...
    def to_dict(self) -> dict[str, Any]: ...


def checked_spec(store: StateStore, spec: StartSpec, version_field: str) -> dict[str, Any]:
    """The spec to store: valid on its own, and its `version_field` ("" = none) a stored
    version. Raises SpecError."""
    spec.validate()
    version_id = getattr(spec, version_field)
    if version_id and store.get_model_version(version_id) is None:
        raise SpecError(f"{version_field} {version_id!r} is not a known model version")
    return spec.to_dict()


@dataclass(frozen=True)
class NewVersion:
    """What a job produced, before it becomes a stored version."""

    kind: VersionKind
    digest: str  # the weights' artifact (an adapter version: base with the adapter merged)
    model: ModelInfo
    parent_id: str | None
    meta: VersionMeta
    num_params: int  # trainable parameters (engine.schemas.num_parameters)


def publish_version(ctx: JobContext, new: NewVersion, activate: bool = True) -> ModelVersion:
    """Store `new` as this job's version and (`activate`) make it the active (served) one. A
    job publishes one version: resumed after publishing, it gets the stored one back."""
    stored = next((v for v in ctx.store.list_model_versions() if v.job_id == ctx.job_id), None)
    if stored is not None:
        if activate:
            set_active(ctx.store, stored.version_id)
        return stored
    version = ModelVersion(
        version_id=new_id("m"),
        job_id=ctx.job_id,
        parent_id=new.parent_id,
        kind=new.kind,
        digest=new.digest,
        model=new.model.name,
        num_params=new.num_params,
        created_at=ctx.clock(),
        meta=new.meta,
    )
    ctx.store.add_model_version(version)
    if activate:
        set_active(ctx.store, version.version_id)
    return version
