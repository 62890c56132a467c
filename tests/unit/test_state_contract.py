"""One contract suite for every StateStore implementation (memory and SQLite)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from fused.common.domain.records import JobKind, Phase, VersionKind
from fused.common.domain.round_metrics import (
    AggregateSummary,
    ByteSummary,
    PayloadKind,
    RoundMetrics,
)
from fused.common.domain.version_meta import AdapterMeta, UnlearnedMeta, VersionMeta
from fused.coordinator.state import (
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
    StateStore,
    UnknownRecordError,
)

StoreFactory = Callable[[], StateStore]


def participant(pid: str, last_seen: float = 10.0) -> ParticipantRecord:
    return ParticipantRecord(
        participant_id=pid,
        class_counts=[3, 0, 7],
        num_train=10,
        num_test=4,
        registered_at=5.0,
        last_seen=last_seen,
        info={"agent": "1.0", "dataset": "digits"},
    )


def job(job_id: str, created_at: float = 100.0) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        kind=JobKind.TRAIN,
        spec={"rounds": 3, "lr": 0.05, "participants": ["a", "b"], "nested": {"x": [1, 2]}},
        status=JobStatus.PENDING,
        phase="",
        round=0,
        reason="",
        created_at=created_at,
        updated_at=created_at,
    )


def round_record(job_id: str, phase: Phase, rnd: int, loss: float = 1.0) -> RoundRecord:
    return RoundRecord(
        job_id=job_id,
        phase=phase,
        round=rnd,
        started_at=200.0 + rnd,
        finished_at=None,
        participants=["a", "b"],
        metrics=RoundMetrics(
            seconds=2.5,
            failures={"c": "late"},
            bytes=ByteSummary(up={"a": 10, "b": 12}, down={"a": 30, "b": 30}),
            aggregate=AggregateSummary(PayloadKind.WEIGHTS, "cd" * 32, loss, 100),
        ),
    )


def version(vid: str, created_at: float, parent: str | None = None) -> ModelVersion:
    return ModelVersion(
        version_id=vid,
        job_id=None,
        parent_id=parent,
        kind=VersionKind.ADAPTER,
        digest="ab" * 32,
        model="lenet",
        num_params=61706,
        created_at=created_at,
        meta=VersionMeta(
            dataset="fashion_mnist",
            num_classes=10,
            adapter=AdapterMeta("ef" * 32, "01" * 32, ("conv1", "fc"), 0.1, 7, "23" * 32, 120),
            unlearned=UnlearnedMeta("fused", 0.9, 0.05),
        ),
    )


# --------------------------------------------------------------------- participants


def test_participant_upsert_get_and_replace(store: StateStore) -> None:
    assert store.get_participant("p1") is None
    store.upsert_participant(participant("p1"))
    assert store.get_participant("p1") == participant("p1")
    changed = participant("p1", last_seen=50.0)
    changed.class_counts = [1, 1, 1]
    changed.info = {"agent": "2.0"}
    store.upsert_participant(changed)
    assert store.get_participant("p1") == changed
    assert len(store.list_participants()) == 1


def test_participants_listed_by_id(store: StateStore) -> None:
    for pid in ["p3", "p1", "p2", "p10"]:
        store.upsert_participant(participant(pid))
    assert [p.participant_id for p in store.list_participants()] == ["p1", "p10", "p2", "p3"]


def test_touch_participant(store: StateStore) -> None:
    store.upsert_participant(participant("p1", last_seen=10.0))
    store.touch_participant("p1", 99.5)
    got = store.get_participant("p1")
    assert got is not None
    assert got.last_seen == 99.5
    assert got.registered_at == 5.0
    with pytest.raises(UnknownRecordError):
        store.touch_participant("nobody", 1.0)
    assert store.get_participant("nobody") is None


# --------------------------------------------------------------------- jobs


def test_create_and_get_job(store: StateStore) -> None:
    assert store.get_job("j1") is None
    store.create_job(job("j1"))
    got = store.get_job("j1")
    assert got == job("j1")
    assert got is not None and isinstance(got.status, JobStatus)


def test_create_duplicate_job_rejected(store: StateStore) -> None:
    store.create_job(job("j1"))
    with pytest.raises(ValueError, match="j1"):
        store.create_job(job("j1", created_at=1.0))
    assert store.get_job("j1") == job("j1")


def test_update_job(store: StateStore) -> None:
    store.create_job(job("j1"))
    before = time.time()
    updated = store.update_job(
        "j1", status=JobStatus.RUNNING, phase="train", round=2, result={"acc": 0.5}
    )
    assert updated.status is JobStatus.RUNNING
    assert (updated.phase, updated.round, updated.result) == ("train", 2, {"acc": 0.5})
    assert updated.updated_at >= before  # set automatically
    assert updated.created_at == 100.0
    assert store.get_job("j1") == updated

    explicit = store.update_job("j1", status=JobStatus.COMPLETED, reason="done", updated_at=7.0)
    assert explicit.updated_at == 7.0
    assert explicit.status is JobStatus.COMPLETED
    assert store.get_job("j1") == explicit


def test_update_job_errors(store: StateStore) -> None:
    with pytest.raises(UnknownRecordError):
        store.update_job("missing", status=JobStatus.RUNNING)
    store.create_job(job("j1"))
    with pytest.raises(ValueError, match="no_such_field"):
        store.update_job("j1", no_such_field=1)
    with pytest.raises(ValueError):
        store.update_job("j1", status="not-a-status")
    assert store.get_job("j1") == job("j1")  # failed updates change nothing


def test_jobs_listed_oldest_first(store: StateStore) -> None:
    store.create_job(job("c", created_at=3.0))
    store.create_job(job("b", created_at=1.0))
    store.create_job(job("a", created_at=3.0))
    store.create_job(job("z", created_at=2.0))
    assert [j.job_id for j in store.list_jobs()] == ["b", "z", "a", "c"]


# --------------------------------------------------------------------- rounds


def test_rounds_replace_by_key_and_keep_first_saved_order(store: StateStore) -> None:
    store.create_job(job("j1"))
    store.create_job(job("j2"))
    store.save_round(round_record("j1", Phase.TRAIN, 2))
    store.save_round(round_record("j1", Phase.TRAIN, 1))
    store.save_round(round_record("j2", Phase.TRAIN, 1))
    store.save_round(round_record("j1", Phase.EVALUATE, 1))
    finished = round_record("j1", Phase.TRAIN, 2, loss=0.25)
    finished.finished_at = 300.0
    finished.participants = ["b"]
    store.save_round(finished)  # replaces, keeps its position

    rounds = store.list_rounds("j1")
    assert [(r.phase, r.round) for r in rounds] == [("train", 2), ("train", 1), ("evaluate", 1)]
    assert rounds[0] == finished
    assert rounds[1] == round_record("j1", Phase.TRAIN, 1)
    assert store.list_rounds("j2") == [round_record("j2", Phase.TRAIN, 1)]
    assert store.list_rounds("unknown") == []


def test_round_for_unknown_job_rejected(store: StateStore) -> None:
    with pytest.raises(UnknownRecordError):
        store.save_round(round_record("nope", Phase.TRAIN, 1))


# --------------------------------------------------------------------- model versions


def test_model_versions(store: StateStore) -> None:
    assert store.get_model_version("v1") is None
    store.add_model_version(version("v2", created_at=5.0))
    store.add_model_version(version("v1", created_at=5.0))
    store.add_model_version(version("v0", created_at=9.0, parent="v1"))
    store.create_job(job("j1"))
    from_job = version("v3", created_at=1.0)
    from_job.job_id = "j1"
    store.add_model_version(from_job)

    assert store.get_model_version("v1") == version("v1", created_at=5.0)
    assert store.get_model_version("v0") == version("v0", created_at=9.0, parent="v1")
    assert [v.version_id for v in store.list_model_versions()] == ["v3", "v1", "v2", "v0"]


def test_model_version_errors(store: StateStore) -> None:
    store.add_model_version(version("v1", created_at=1.0))
    with pytest.raises(ValueError, match="v1"):
        store.add_model_version(version("v1", created_at=2.0))
    with pytest.raises(UnknownRecordError):
        store.add_model_version(version("v2", created_at=2.0, parent="ghost"))
    orphan = version("v3", created_at=2.0)
    orphan.job_id = "ghost-job"
    with pytest.raises(UnknownRecordError):
        store.add_model_version(orphan)
    assert [v.version_id for v in store.list_model_versions()] == ["v1"]


def test_dropped_versions_go_together_and_their_kept_children_become_roots(
    store: StateStore,
) -> None:
    store.add_model_version(version("v1", created_at=1.0))
    store.add_model_version(version("v2", created_at=2.0, parent="v1"))
    store.add_model_version(version("v3", created_at=3.0, parent="v2"))
    store.add_model_version(version("v4", created_at=4.0, parent="v3"))
    with pytest.raises(UnknownRecordError):
        store.drop_model_versions(["v1", "ghost"])
    assert len(store.list_model_versions()) == 4  # nothing changed
    store.drop_model_versions(["v2", "v1", "v3"])
    assert store.list_model_versions() == [version("v4", created_at=4.0)]  # now a root


def test_events_numbered_per_job(store: StateStore) -> None:
    store.create_job(job("j1"))
    store.create_job(job("j2"))
    e1 = store.append_event("j1", "job_started", "", 0, "started", {}, 1.0)
    e2 = store.append_event("j1", "round_started", "train", 1, "r1", {"n": 2}, 2.0)
    f1 = store.append_event("j2", "job_started", "", 0, "started", {}, 3.0)
    e3 = store.append_event("j1", "round_completed", "train", 1, "r1 done", {"loss": 0.5}, 4.0)

    assert (e1.seq, e2.seq, e3.seq, f1.seq) == (1, 2, 3, 1)
    assert e2 == JobEvent("j1", 2, 2.0, "round_started", "train", 1, "r1", {"n": 2})
    assert store.list_events("j1") == [e1, e2, e3]
    assert store.list_events("j1", after_seq=1) == [e2, e3]
    assert store.list_events("j1", after_seq=3) == []
    assert store.list_events("j2") == [f1]
    assert store.list_events("none") == []


def test_event_for_unknown_job_rejected(store: StateStore) -> None:
    with pytest.raises(UnknownRecordError):
        store.append_event("nope", "job_started", "", 0, "", {}, 1.0)


# --------------------------------------------------------------------- settings


def test_settings(store: StateStore) -> None:
    assert store.get_setting("served_version") is None
    store.set_setting("served_version", "v1")
    store.set_setting("other", "")
    store.set_setting("served_version", "v2")
    assert store.get_setting("served_version") == "v2"
    assert store.get_setting("other") == ""


# --------------------------------------------------------------------- isolation


def test_returned_and_saved_objects_do_not_alias_stored_state(store: StateStore) -> None:
    p = participant("p1")
    store.upsert_participant(p)
    p.class_counts.append(99)
    p.info["agent"] = "mutated"
    got_p = store.get_participant("p1")
    assert got_p == participant("p1")
    assert got_p is not None
    got_p.class_counts.clear()
    got_p.last_seen = -1.0
    store.list_participants()[0].info.clear()
    assert store.get_participant("p1") == participant("p1")

    j = job("j1")
    store.create_job(j)
    j.spec["rounds"] = 1000
    got_j = store.get_job("j1")
    assert got_j is not None
    got_j.spec["nested"]["x"].append(3)
    store.list_jobs()[0].result["x"] = 1
    store.update_job("j1", round=1).spec.clear()
    stored_j = store.get_job("j1")
    assert stored_j is not None
    assert stored_j.spec == job("j1").spec
    assert stored_j.result == {}

    r = round_record("j1", Phase.TRAIN, 1)
    store.save_round(r)
    assert r.metrics.bytes is not None
    r.metrics.failures["d"] = "x"
    r.metrics.bytes.up["a"] = 0
    store.list_rounds("j1")[0].participants.append("x")
    assert store.list_rounds("j1") == [round_record("j1", Phase.TRAIN, 1)]

    v = version("v1", created_at=1.0)
    store.add_model_version(v)
    v.meta = VersionMeta()
    got_v = store.get_model_version("v1")
    assert got_v is not None
    got_v.meta = VersionMeta(accuracy=0.0)
    store.list_model_versions()[0].meta = VersionMeta()
    assert store.get_model_version("v1") == version("v1", created_at=1.0)

    data = {"n": [1, 2]}
    event = store.append_event("j1", "k", "", 0, "", data, 1.0)
    data["n"].append(3)
    event.data["n"].append(4)
    store.list_events("j1")[0].data.clear()
    assert store.list_events("j1")[0].data == {"n": [1, 2]}


def test_concurrent_appends_get_unique_seqs(store: StateStore) -> None:
    store.create_job(job("j1"))

    def worker(i: int) -> None:
        for k in range(20):
            store.append_event("j1", "tick", "", 0, f"{i}-{k}", {}, float(k))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in store.list_events("j1")] == list(range(1, 81))
