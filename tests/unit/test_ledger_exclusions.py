"""What the forget ledger makes a participant leave out of a task: a forgotten participant
refuses training and reports no remaining test data, forgotten classes leave training and
RA, a holder drops its own forgotten samples; the set travels in the task intact."""

from __future__ import annotations

import pytest
import torch

from fused.common.domain.tasks import ForgetSet, ForgetSpec, HeldSamples, TaskKind, TaskSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import load_shard
from fused.common.rpc.task_convert import task_from_proto, task_to_proto
from fused.participant.forgetting import remaining_test, remaining_train
from fused.participant.site import Site, shard_site


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Site]:
    out = tmp_path_factory.mktemp("ledger") / "shards"
    partition_to_directory("digits", None, out, PartitionConfig(num_participants=2))
    return [shard_site(load_shard(out / f"p{i}")) for i in range(2)]


def test_a_forgotten_participant_refuses_training_and_reports_no_ra(sites: list[Site]) -> None:
    excluded = ForgetSet(participants=("p0",))
    with pytest.raises(ValueError, match="p0 was forgotten \\(forget ledger\\)"):
        remaining_train(sites[0], None, 0, excluded)
    assert len(remaining_test(sites[0], None, excluded)) == 0
    assert len(remaining_train(sites[1], None, 0, excluded)) == len(sites[1].data.train)


def test_forgotten_classes_and_own_samples_are_dropped(sites: list[Site]) -> None:
    site = sites[1]
    ids = tuple(int(i) for i in site.data.train.ids[:5])
    excluded = ForgetSet(classes=(3,), samples=(HeldSamples("p1", ids),))
    train = remaining_train(site, None, 0, excluded)
    assert not bool((train.y == 3).any())
    assert not bool(torch.isin(train.ids, torch.tensor(ids)).any())
    kept = int((site.data.train.y != 3).sum()) - sum(
        1
        for i, y in zip(site.data.train.ids.tolist(), site.data.train.y.tolist(), strict=True)
        if i in ids and y != 3
    )
    assert len(train) == kept
    test = remaining_test(site, None, excluded)
    assert not bool((test.y_true == 3).any()) and len(test) > 0


def test_the_set_travels_in_the_task(sites: list[Site]) -> None:
    excluded = ForgetSet(("p0",), (3, 7), (HeldSamples("p1", (4, 9)),))
    task = TaskSpec(
        "t",
        "j",
        "train",
        1,
        TaskKind.TRAIN,
        "a" * 64,
        "mlp",
        10,
        TrainConfig(),
        0.0,
        excluded=excluded.for_participant("p1"),
    )
    assert task_from_proto(task_to_proto(task)).excluded == excluded
    assert excluded.for_participant("p2").samples == ()


def test_a_job_takes_its_own_request_out_of_the_set() -> None:
    excluded = ForgetSet(("p0", "p2"), (3,), (HeldSamples("p1", (4, 9)),))
    assert excluded.without(ForgetSpec("participant", "p0")).participants == ("p2",)
    assert excluded.without(ForgetSpec("class", class_label=3)).classes == ()
    fewer = excluded.without(ForgetSpec("samples", participant_id="p1", sample_ids=(4,)))
    assert fewer.samples == (HeldSamples("p1", (9,)),)
    assert excluded.without(ForgetSpec("samples", "p1", sample_ids=(4, 9))).samples == ()
