"""Fixtures that start real coordinator and participant processes on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.tools.launch import LocalFederation

# The agents these tests start skip their start-up training step (about 2 CPU-seconds each on
# 2 shared cores): no test times a first round, and tests/unit/test_warmup.py covers the step.
os.environ.setdefault("FUSED_SKIP_WARMUP", "true")

NUM_PARTICIPANTS = 3


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "shards"
    partition_to_directory("digits", None, out, PartitionConfig(num_participants=NUM_PARTICIPANTS))
    return out


@pytest.fixture(scope="module")
def federation(
    digits_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    """A coordinator with NUM_PARTICIPANTS agents, shared by the tests of one module; the
    coordinator also counts each participant's bytes (/metrics/participants)."""
    with LocalFederation(tmp_path_factory.mktemp("federation")) as fed:
        fed.start_coordinator(
            *("--offline-after-s", "10", "--heartbeat-interval-s", "1"),
            "--per-participant-metrics",
        )
        for i in range(NUM_PARTICIPANTS):
            fed.start_participant(digits_shards / f"p{i}")
        fed.wait_online(NUM_PARTICIPANTS)
        yield fed
