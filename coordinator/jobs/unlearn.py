"""The unlearning job: resolve the base version, measure it (RA/FA before), run the requested
method on the remaining data, store the result as a new version whose parent is the base."""

from __future__ import annotations

import dataclasses
from typing import Any

from fused.common.domain.ledger import LedgerEntry, LedgerStatus
from fused.common.domain.records import JobKind, Phase
from fused.common.domain.round_metrics import EvalSummary
from fused.common.domain.specs import (
    INHERITED_LR_FACTOR,
    FusedConfig,
    SpecError,
    UnlearningSpec,
)
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.domain.version_meta import UnlearnedMeta, VersionMeta
from fused.coordinator.engine.checkpoints import committed_round
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.engine.evaluation import ModelInfo, evaluate_model
from fused.coordinator.engine.kind import (
    JobKindHandler,
    JobResult,
    NewVersion,
    checked_spec,
    publish_version,
)
from fused.coordinator.engine.participants import join_federation, version_federation
from fused.coordinator.engine.schemas import load_schema, num_parameters
from fused.coordinator.engine.stopping import stop_note
from fused.coordinator.methods import METHODS
from fused.coordinator.methods.base import Base, Unlearned
from fused.coordinator.methods.selection import SELECTION_RULES
from fused.coordinator.state import StateStore
from fused.coordinator.versions import active_version, load_weights, original_training


def _inherited_training(store: StateStore, version_id: str) -> TrainConfig:
    """The local optimiser settings of the training that began the base's chain, its
    learning rate scaled by INHERITED_LR_FACTOR; the defaults for a chain no training job
    began (weights imported another way)."""
    base = store.get_model_version(version_id) if version_id else active_version(store)
    trained = original_training(store, base) if base is not None else None
    if trained is None:
        return TrainConfig()
    return dataclasses.replace(trained.train, lr=trained.train.lr * INHERITED_LR_FACTOR)


class UnlearningJob(JobKindHandler):
    """The method (`METHODS[spec.method]`) does the rounds; this kind resolves the base,
    measures it before and publishes the result. Resumes after the last committed round."""

    kind = JobKind.UNLEARN
    resumable = True

    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        assert isinstance(request, UnlearningSpec)
        config = request.config
        if isinstance(config, FusedConfig) and config.selection not in SELECTION_RULES:
            rules = ", ".join(SELECTION_RULES)
            raise SpecError(f"selection must be one of {rules}, got {config.selection!r}")
        spec = checked_spec(store, request, "base_version")
        if request.train is None:  # stored explicitly, so a resumed job trains alike
            spec["train"] = dataclasses.asdict(_inherited_training(store, request.base_version))
        return spec

    async def run(self, ctx: JobContext, spec_dict: dict[str, Any], resume: bool) -> JobResult:
        spec = UnlearningSpec.from_dict(spec_dict)
        ctx.policy = spec.policy
        ctx.excluded = ctx.excluded.without(spec.forget)  # this request is the job's own
        started = ctx.clock()
        base = await resolve_base(ctx, spec)
        if resume:
            ctx.emit("job_resumed", "", 0, "resuming after the last committed round")
        before = await _evaluate_base(ctx, spec, base)
        method = METHODS[spec.method]
        unlearned = await method.run(ctx, spec, base)
        after = unlearned.history[-1].evaluation
        assert after is not None  # the last round is always evaluated
        applied = spec.replays or (request_entry_id(ctx.job_id),)
        new = _new_version(spec, base, unlearned, after, forgets(ctx, base, applied))
        version = publish_version(ctx, new, activate=_serve(ctx, spec, new.meta.forgets))
        if spec.replays:
            _announce_replay(ctx, spec.replays, version.version_id)
        else:
            record_request(ctx, spec.forget, version.version_id)
        details = {
            "version_id": version.version_id,
            "ledger_entries": list(applied),
            "base_version": base.version.version_id,
            "base_sha256": base.version.digest,
            "method": spec.method,
            "ra_before": before.accuracy,
            "fa_before": before.fa,
            "ra_after": after.accuracy,
            "fa_after": after.fa,
            "mia_before": before.mia_auc,
            "mia_after": after.mia_auc,
            "model_params": version.num_params,
            "seconds": ctx.clock() - started,
            "rounds_run": unlearned.history[-1].round,
            "stopped": stop_note(method.stop_rule(spec), unlearned.history, spec.rounds),
            **unlearned.details,
            "history": [entry.to_dict() for entry in unlearned.history],
        }
        if unlearned.adapter is not None:
            details.update(unlearned.adapter.to_dict())
        summary = (
            f"{spec.method}: RA {before.accuracy:.4f} -> {after.accuracy:.4f}, "
            f"FA {_fmt(before.fa)} -> {_fmt(after.fa)}"
        )
        return JobResult(summary, details)


def request_entry_id(job_id: str) -> str:
    """The ledger entry of the request a job applies (one per job, named after it)."""
    return "f-" + job_id.removeprefix("job-")


def forgets(ctx: JobContext, base: Base, applied: tuple[str, ...]) -> tuple[str, ...]:
    """The ledger entries the new version forgets: those its base forgets, those the job's
    data left out (the ledger's when it was created), and the ones it applies."""
    return tuple(sorted({*base.version.meta.forgets, *ctx.excluded_entries, *applied}))


def _serve(ctx: JobContext, spec: UnlearningSpec, forgotten: tuple[str, ...]) -> bool:
    """A new request's version is served. A withdrawal's rebuild is served only if it
    forgets nothing withdrawn since it started: after a second withdrawal, the second
    rebuild's version is the one to serve, whichever finishes first."""
    return not spec.replays or rebuild_current(forgotten, ctx.store.list_ledger())


def rebuild_current(forgotten: tuple[str, ...], ledger: list[LedgerEntry]) -> bool:
    binding = {e.entry_id for e in ledger if e.binding}
    return set(forgotten) <= binding


def _announce_replay(ctx: JobContext, entries: tuple[str, ...], version_id: str) -> None:
    listed = ", ".join(entries)
    message = f"forget ledger: {listed} applied again by {version_id} after a withdrawal"
    ctx.emit("ledger_reapplied", "", 0, message, {"entries": list(entries)})


def record_request(ctx: JobContext, forget: ForgetSpec, version_id: str) -> LedgerEntry:
    """The request in the forget ledger, active: every later job leaves its data out. One
    entry per job (its id derives from the job's), so a resumed job never adds a second."""
    entry_id = request_entry_id(ctx.job_id)
    existing = next((e for e in ctx.store.list_ledger() if e.entry_id == entry_id), None)
    if existing is not None:
        return existing
    job = ctx.store.get_job(ctx.job_id)
    requested_at = job.created_at if job is not None else ctx.clock()
    entry = LedgerEntry(
        entry_id,
        forget,
        ctx.requested_by,
        requested_at,
        ctx.job_id,
        version_id,
        LedgerStatus.ACTIVE,
        ctx.clock(),
    )
    ctx.store.add_ledger_entry(entry)
    ctx.emit("ledger_recorded", "", 0, f"forget ledger: {entry_id} active", {"entry": entry_id})
    return entry


async def resolve_base(ctx: JobContext, spec: UnlearningSpec) -> Base:
    version = (
        ctx.store.get_model_version(spec.base_version)
        if spec.base_version
        else active_version(ctx.store)
    )
    if version is None:
        raise JobFailed(f"no model version {spec.base_version or '(active)'} to unlearn from")
    # An adapter version is a base too: its merged weights stay frozen under the next
    # request's adapter (requests stack), so each version's parent is the one before it and
    # switching back along the chain is a pointer switch, exact by construction.
    fed = await join_federation(
        ctx,
        spec.min_participants,
        spec.wait_for_participants_s,
        spec.forget,
        version_federation(version),
    )
    num_classes = fed.num_classes
    try:
        spec.forget.validate(num_classes)
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    weights = await load_weights(ctx.artifacts, version.digest)
    model = ModelInfo(version.model, num_classes, version.meta.dataset, fed.schema_digest)
    schema = await load_schema(ctx.artifacts, fed.schema_digest)
    return Base(version, model, weights, schema)


async def _evaluate_base(ctx: JobContext, spec: UnlearningSpec, base: Base) -> EvalSummary:
    done = committed_round(ctx, Phase.EVALUATE, 0)
    if done is not None and done.evaluation is not None:
        return done.evaluation
    return await evaluate_model(
        ctx, base.model, 0, base.version.digest, spec.round_deadline_s, spec.forget
    )


def _new_version(
    spec: UnlearningSpec,
    base: Base,
    unlearned: Unlearned,
    after: EvalSummary,
    forgotten: tuple[str, ...],
) -> NewVersion:
    meta = VersionMeta(
        dataset=base.model.dataset,
        num_classes=base.model.num_classes,
        schema_digest=base.model.schema_digest,
        init_digest=base.version.meta.init_digest,
        adapter=unlearned.adapter,
        unlearned=UnlearnedMeta(spec.method, after.accuracy, after.fa),
        forgets=forgotten,
    )
    parent = base.version.version_id
    params = num_parameters(base.schema)
    return NewVersion(unlearned.kind, unlearned.digest, base.model, parent, meta, params)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
