"""The agent's start-up warm-up (participant/warmup.py) on real digits shards: it trains a
throwaway model and leaves nothing behind that a task could see."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_source
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import Shard
from fused.common.ml.data.sources import load_digits_source
from fused.common.ml.models import init_model
from fused.common.ml.workloads import workload_for
from fused.common.runtime.config import load_config
from fused.participant.executor import local_update
from fused.participant.main import ParticipantConfig
from fused.participant.site import Site, shard_site
from fused.participant.warmup import warm_up, warm_up_logged

CFG = TrainConfig(local_epochs=1, lr=0.05, batch_size=32, seed=11)


@pytest.fixture(scope="module")
def shard() -> Shard:
    return partition_source(load_digits_source(), PartitionConfig(num_participants=2, seed=1))[0]


def test_warm_up_leaves_the_global_rng_and_later_training_unchanged(shard: Shard) -> None:
    site = shard_site(shard)
    weights = init_model("mlp", 10, 0).state_dict()
    cold, _ = local_update(site, weights, CFG)
    rng = torch.get_rng_state()
    assert warm_up(site) > 0
    assert torch.equal(torch.get_rng_state(), rng)  # model construction drew from a fork
    warm, _ = local_update(site, weights, CFG)
    assert list(cold) == list(warm)
    for name in cold:
        assert torch.equal(cold[name], warm[name]), name


def test_warm_up_with_fewer_samples_than_its_batch(shard: Shard) -> None:
    site = shard_site(shard)
    one = dataclasses.replace(site.data, train=site.data.train.subset(slice(0, 1)))
    assert warm_up(Site(site.participant_id, site.workload, one)) > 0


def test_a_failing_workload_is_logged_not_raised(
    shard: Shard, caplog: pytest.LogCaptureFixture
) -> None:
    site = shard_site(shard)
    lenet = workload_for("lenet", 10)  # 28x28 inputs: the 8x8 digits cannot pass through it
    with caplog.at_level(logging.WARNING, logger="fused.participant.warmup"):
        warm_up_logged(Site(site.participant_id, lenet, site.data))
    assert "warm-up step failed" in caplog.text


def test_warmup_is_on_by_default_and_can_be_turned_off() -> None:
    def parse(*argv: str) -> ParticipantConfig:
        return load_config(ParticipantConfig, argv, prog="p", section="participant", environ={})

    assert parse().skip_warmup is False
    assert parse("--skip-warmup").skip_warmup is True
