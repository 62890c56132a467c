"""The consolidation job (`fusedctl consolidate`): fast now, clean later.

FUSED answers each request with an adapter in minutes; the gold standard is a model that never
saw the forgotten data. A consolidation retrains from the chain's stored initial weights on
the data the ledger allows, while the chain keeps serving. It measures the chain and the
retrained model on each request it consolidates (RA, FA per request: the audit rounds), then
publishes the retrained model as a version whose parent is the chain's top (so switching back
is exact), serves it if the chain's top is still served, and marks the requests consolidated
in one ledger transaction. Every step resumes after a restart: audit rounds and training
rounds are committed records, and publishing and marking are idempotent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fused.common.domain.ledger import LedgerEntry, LedgerStatus
from fused.common.domain.records import JobKind, ModelVersion, Phase, VersionKind
from fused.common.domain.round_metrics import EvalSummary
from fused.common.domain.specs import ConsolidationSpec, SpecError
from fused.common.domain.version_meta import VersionMeta
from fused.coordinator.engine.checkpoints import committed_round
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.engine.evaluation import ModelInfo, evaluate_model
from fused.coordinator.engine.fedavg_loop import FedAvgPlan, fedavg_rounds
from fused.coordinator.engine.kind import JobKindHandler, JobResult, NewVersion, publish_version
from fused.coordinator.engine.participants import join_federation, version_federation
from fused.coordinator.engine.schemas import load_schema, num_parameters
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.state import StateStore
from fused.coordinator.versions import (
    active_version,
    load_weights,
    original_training,
    save_weights,
)

CONSOLIDATES_KEY = "consolidates"  # the active ledger entries when the job was created


class ConsolidationJob(JobKindHandler):
    kind = JobKind.CONSOLIDATE
    resumable = True

    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        assert isinstance(request, ConsolidationSpec)
        request.validate()
        top = _top(store, request.base_version)
        if not top.meta.init_digest:
            raise SpecError(f"{top.version_id} records no initial weights to retrain from")
        active = [e.entry_id for e in store.list_ledger() if e.status is LedgerStatus.ACTIVE]
        if not active:
            raise SpecError("the forget ledger has no active request to consolidate")
        spec = request if request.rounds else _training_budget(store, top, request)
        spec = dataclasses.replace(spec, base_version=top.version_id)
        return {**spec.to_dict(), CONSOLIDATES_KEY: active}

    async def run(self, ctx: JobContext, spec_dict: dict[str, Any], resume: bool) -> JobResult:
        entry_ids = tuple(spec_dict.pop(CONSOLIDATES_KEY))
        spec = ConsolidationSpec.from_dict(spec_dict)
        ctx.policy = spec.policy
        started = ctx.clock()
        if resume:
            ctx.emit("job_resumed", "", 0, "resuming after the last committed round")
        top = ctx.store.get_model_version(spec.base_version)
        if top is None:
            raise JobFailed(f"no model version {spec.base_version} to consolidate")
        fed = await join_federation(
            ctx,
            spec.min_participants,
            spec.wait_for_participants_s,
            reference=version_federation(top),
        )
        model = ModelInfo(top.model, fed.num_classes, top.meta.dataset, fed.schema_digest)
        entries = _entries(ctx, entry_ids)
        deadline = spec.round_deadline_s
        chain = [
            await _audit(ctx, model, top.digest, e, i, deadline) for i, e in enumerate(entries)
        ]
        blob, ra = await _retrain(ctx, spec, model, top)
        n = len(entries)
        retrained = [
            await _audit(ctx, model, blob, e, n + i, deadline) for i, e in enumerate(entries)
        ]
        version, served = await _publish(ctx, top, model, blob, ra)
        marked = _mark(ctx, entry_ids)
        details = {
            "version_id": version.version_id,
            "base_version": top.version_id,
            "served": served,
            "consolidated": marked,
            "rounds": spec.rounds,
            "ra_chain": chain[0].accuracy if chain else None,
            "ra_consolidated": ra,
            "requests": [
                {
                    "entry_id": e.entry_id,
                    "fa_chain": c.fa,
                    "fa_consolidated": r.fa,
                    "mia_chain": c.mia_auc,
                    "mia_consolidated": r.mia_auc,
                }
                for e, c, r in zip(entries, chain, retrained, strict=True)
            ],
            "seconds": ctx.clock() - started,
        }
        summary = f"consolidated {len(marked)} requests into {version.version_id}"
        if not served:
            summary += f" (not served: the active version changed from {top.version_id})"
        return JobResult(summary, details)


def _top(store: StateStore, version_id: str) -> ModelVersion:
    top = store.get_model_version(version_id) if version_id else active_version(store)
    if top is None:
        named = repr(version_id) if version_id else "(none is served)"
        raise SpecError(f"no model version {named} to consolidate")
    return top


def _training_budget(
    store: StateStore, top: ModelVersion, request: ConsolidationSpec
) -> ConsolidationSpec:
    """The request with the rounds, train config and seed of the training that began the
    chain: the retrain it is measured against."""
    trained = original_training(store, top)
    if trained is None:
        raise SpecError(f"no training job in the lineage of {top.version_id}: give the rounds")
    return dataclasses.replace(
        request, rounds=trained.rounds, train=trained.train, seed=trained.seed
    )


def _entries(ctx: JobContext, entry_ids: tuple[str, ...]) -> list[LedgerEntry]:
    by_id = {e.entry_id: e for e in ctx.store.list_ledger()}
    return [by_id[e] for e in entry_ids if e in by_id]


async def _audit(
    ctx: JobContext, model: ModelInfo, blob: str, entry: LedgerEntry, i: int, deadline: float
) -> EvalSummary:
    """RA and the FA of one request on `blob`: audit round i + 1 (committed: kept on resume)."""
    done = committed_round(ctx, Phase.AUDIT, i + 1)
    if done is not None and done.evaluation is not None:
        return done.evaluation
    return await evaluate_model(ctx, model, i + 1, blob, deadline, entry.forget, phase=Phase.AUDIT)


async def _retrain(
    ctx: JobContext, spec: ConsolidationSpec, model: ModelInfo, top: ModelVersion
) -> tuple[str, float]:
    """FedAvg from the stored initial weights; the participants leave the ledger's data out."""
    weights = await load_weights(ctx.artifacts, top.meta.init_digest)
    first = await save_weights(ctx.artifacts, weights, model.name)
    plan = FedAvgPlan(
        Phase.RETRAIN,
        spec.rounds,
        spec.train,
        spec.seed,
        0,
        spec.min_participants,
        spec.round_deadline_s,
        False,
    )
    payload = WeightsPayload(model.name, weights)
    blob, history = await fedavg_rounds(ctx, model, plan, payload, first)
    evaluation = history[-1].evaluation
    assert evaluation is not None  # the last round is always evaluated
    return blob, evaluation.accuracy


async def _publish(
    ctx: JobContext, top: ModelVersion, model: ModelInfo, blob: str, ra: float
) -> tuple[ModelVersion, bool]:
    """The retrained model as the chain's successor; served unless the operator or another
    job changed the served version meanwhile (then it would drop their requests)."""
    served_now = active_version(ctx.store)
    mine = [v.version_id for v in ctx.store.list_model_versions() if v.job_id == ctx.job_id]
    serve = served_now is not None and served_now.version_id in (top.version_id, *mine)
    meta = VersionMeta(
        model.dataset,
        model.num_classes,
        model.schema_digest,
        top.meta.init_digest,
        accuracy=ra,
        forgets=tuple(sorted(ctx.excluded_entries)),
    )
    schema = await load_schema(ctx.artifacts, model.schema_digest)
    new = NewVersion(VersionKind.BASE, blob, model, top.version_id, meta, num_parameters(schema))
    return publish_version(ctx, new, activate=serve), serve


def _mark(ctx: JobContext, entry_ids: tuple[str, ...]) -> list[str]:
    """Mark the consolidated entries, all in one transaction; an entry withdrawn meanwhile
    stays withdrawn."""
    status = {e.entry_id: e.status for e in ctx.store.list_ledger()}
    ids = [e for e in entry_ids if status.get(e) is LedgerStatus.ACTIVE]
    if ids:
        ctx.store.set_ledger_status(ids, LedgerStatus.CONSOLIDATED, ctx.clock())
        ctx.emit("ledger_consolidated", "", 0, f"forget ledger: {', '.join(ids)} consolidated")
    kept = (LedgerStatus.ACTIVE, LedgerStatus.CONSOLIDATED)
    return [e for e in entry_ids if status.get(e) in kept]
