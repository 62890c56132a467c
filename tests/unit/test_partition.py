"""Partitioning (Dirichlet split, attackers, backdoor) and the shard directory format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fused.common.ml.data.partition import (
    apply_trigger,
    dirichlet_partition,
    partition_source,
    partition_to_directory,
)
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import (
    Shard,
    load_global_test,
    load_shard,
    load_split,
    read_partition,
    write_partition,
)
from fused.common.ml.data.sources import SourceData, load_digits_source


@pytest.fixture(scope="module")
def digits() -> SourceData:
    return load_digits_source()


def ids_per_participant(shards: list[Shard]) -> list[tuple[list[int], list[int]]]:
    return [(s.train.ids.tolist(), s.test.ids.tolist()) for s in shards]


def source_rows(source: SourceData, ids: torch.Tensor) -> torch.Tensor:
    """Rows of `source.train` holding `ids` (digits ids are load order, not train rows)."""
    by_id = {int(i): row for row, i in enumerate(source.train.ids)}
    return torch.tensor([by_id[int(i)] for i in ids], dtype=torch.int64)


# --- Dirichlet split -----------------------------------------------------------------------


def test_dirichlet_partition_covers_every_index_once() -> None:
    labels = np.repeat(np.arange(5), 40)
    rng = np.random.Generator(np.random.PCG64(3))
    parts = dirichlet_partition(labels, 4, 0.5, rng, min_size=10)
    assert len(parts) == 4 and all(p.size >= 10 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.Generator(np.random.PCG64(0))
    parts = dirichlet_partition(labels, 5, 0.05, rng, min_size=10)
    # With alpha this small each part is dominated by a few classes.
    for part in parts:
        counts = np.bincount(labels[part], minlength=10)
        assert counts.max() / counts.sum() > 0.3


def test_dirichlet_partition_impossible() -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    with pytest.raises(ValueError, match="cannot give 5 parts"):
        dirichlet_partition(np.zeros(20, np.int64), 5, 1.0, rng, min_size=5)
    with pytest.raises(ValueError, match="no Dirichlet"):
        # Feasible in count but Dirichlet draws essentially never split one class evenly.
        dirichlet_partition(np.zeros(20, np.int64), 2, 1e-3, rng, min_size=10)


# --- partition_source ----------------------------------------------------------------------


def test_partition_is_deterministic(digits: SourceData) -> None:
    config = PartitionConfig(num_participants=6, alpha=0.5, seed=11)
    first = ids_per_participant(partition_source(digits, config))
    assert first == ids_per_participant(partition_source(digits, config))
    other = PartitionConfig(num_participants=6, alpha=0.5, seed=12)
    assert first != ids_per_participant(partition_source(digits, other))


def test_every_train_sample_assigned_once(digits: SourceData) -> None:
    shards = partition_source(digits, PartitionConfig(num_participants=7, alpha=0.3, seed=1))
    assigned = torch.cat([torch.cat([s.train.ids, s.test.ids]) for s in shards])
    assert torch.equal(assigned.sort().values, digits.train.ids.sort().values)
    assert [s.meta.participant_id for s in shards] == [f"p{i}" for i in range(7)]


def test_min_train_size_and_test_fraction(digits: SourceData) -> None:
    config = PartitionConfig(num_participants=20, alpha=0.1, seed=5, min_train_size=30)
    for shard in partition_source(digits, config):
        assert len(shard.train) >= 30
        total = len(shard.train) + len(shard.test)
        assert abs(len(shard.test) - 0.2 * total) <= 1
        assert torch.equal(shard.train.y, shard.train.y_true)


def test_attacker_flips_both_splits(digits: SourceData) -> None:
    shards = partition_source(digits, PartitionConfig(num_participants=4, seed=2, attacker=1))
    attacker = shards[1]
    assert attacker.meta.attacker and not shards[0].meta.attacker
    for split in (attacker.train, attacker.test):
        assert torch.equal(split.y, (split.y_true + 1) % 10)
        assert torch.equal(split.y_true, digits.train.y_true[source_rows(digits, split.ids)])
    assert torch.equal(shards[0].train.y, shards[0].train.y_true)


def test_backdoor(digits: SourceData) -> None:
    config = PartitionConfig(
        num_participants=4,
        seed=3,
        backdoor_participant=2,
        backdoor_count=25,
        backdoor_target=7,
        trigger_size=3,
    )
    shard = partition_source(digits, config)[2]
    backdoor = torch.tensor(shard.meta.backdoor_ids)
    assert len(backdoor) == 25 and shard.meta.backdoor_target == 7
    hit = torch.isin(shard.train.ids, backdoor)
    assert int(hit.sum()) == 25
    stamped, clean = shard.train.subset(hit), shard.train.subset(~hit)
    assert torch.all(stamped.x[..., -3:, -3:] == digits.pixel_max)
    original = digits.train.x[source_rows(digits, stamped.ids)]
    assert torch.equal(stamped.x[..., :-3, :], original[..., :-3, :])
    assert torch.all(stamped.y == 7) and torch.all(stamped.y_true != 7)
    assert torch.equal(clean.y, clean.y_true)
    assert torch.equal(shard.test.y, shard.test.y_true)


def test_backdoor_keeps_partition_and_rejects_excess(digits: SourceData) -> None:
    plain = PartitionConfig(num_participants=4, seed=3)
    poisoned = PartitionConfig(num_participants=4, seed=3, backdoor_participant=0, backdoor_count=5)
    assert ids_per_participant(partition_source(digits, plain)) == ids_per_participant(
        partition_source(digits, poisoned)
    )
    too_many = PartitionConfig(
        num_participants=4, seed=3, backdoor_participant=0, backdoor_count=5000
    )
    with pytest.raises(ValueError, match="exceeds"):
        partition_source(digits, too_many)


@pytest.mark.parametrize(
    "config",
    [
        PartitionConfig(num_participants=0),
        PartitionConfig(num_participants=3, attacker=3),
        PartitionConfig(num_participants=3, backdoor_participant=-1),
        PartitionConfig(num_participants=3, backdoor_target=10),
        PartitionConfig(num_participants=3, trigger_size=9),
        PartitionConfig(num_participants=3, test_fraction=1.0),
        PartitionConfig(num_participants=3, alpha=0.0),
    ],
)
def test_invalid_config(digits: SourceData, config: PartitionConfig) -> None:
    with pytest.raises(ValueError):
        partition_source(digits, config)


def test_apply_trigger_copies() -> None:
    x = torch.zeros((2, 3, 5, 5), dtype=torch.uint8)
    out = apply_trigger(x, 2, 255)
    assert int(x.sum()) == 0
    assert torch.all(out[..., 3:, 3:] == 255) and int(out.sum()) == 2 * 3 * 4 * 255
    with pytest.raises(ValueError):
        apply_trigger(x, 6, 255)


# --- shard files ---------------------------------------------------------------------------


def assert_same_data(a: Shard, b: Shard) -> None:
    for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
        for name in ("x", "y", "y_true", "ids"):
            assert torch.equal(getattr(split_a, name), getattr(split_b, name)), name
        assert split_a.scale == split_b.scale


def test_write_and_load_roundtrip(digits: SourceData, tmp_path: Path) -> None:
    config = PartitionConfig(
        num_participants=3, seed=9, attacker=0, backdoor_participant=1, backdoor_count=4
    )
    shards = partition_source(digits, config)
    write_partition(tmp_path, digits, shards, config)
    for shard in shards:
        loaded = load_shard(tmp_path / shard.meta.participant_id)
        assert loaded.meta == shard.meta
        assert_same_data(loaded, shard)
        assert loaded.class_counts() == shard.class_counts()
    summary = read_partition(tmp_path)
    assert summary["dataset"] == "digits" and summary["participant_ids"] == ["p0", "p1", "p2"]
    assert summary["config"]["backdoor_count"] == 4
    sizes = [(p["train_size"], p["test_size"]) for p in summary["participants"]]
    assert sizes == [(len(s.train), len(s.test)) for s in shards]
    global_test = load_global_test(tmp_path)
    assert torch.equal(global_test.ids, digits.test.ids)
    assert torch.equal(global_test.x, digits.test.x)
    assert not list(tmp_path.rglob("*.tmp"))


def test_partition_to_directory(tmp_path: Path) -> None:
    config = PartitionConfig(num_participants=2, seed=4)
    summary = partition_to_directory("digits", None, tmp_path, config)
    on_disk = json.loads((tmp_path / "partition.json").read_text())
    assert summary == on_disk
    assert sum(p["train_size"] + p["test_size"] for p in summary["participants"]) == 1438
    assert len(load_shard(tmp_path / "p1").train) == summary["participants"][1]["train_size"]


@pytest.fixture
def shard_dir(digits: SourceData, tmp_path: Path) -> Path:
    config = PartitionConfig(num_participants=2, seed=0)
    write_partition(tmp_path, digits, partition_source(digits, config), config)
    return tmp_path / "p0"


def rewrite(path: Path, **changes: torch.Tensor) -> None:
    tensors = load_file(str(path))
    tensors.update(changes)
    save_file(tensors, str(path))


def test_load_shard_rejects_length_mismatch(shard_dir: Path) -> None:
    rewrite(shard_dir / "train.safetensors", ids=torch.arange(3))
    with pytest.raises(ValueError, match="lengths differ"):
        load_shard(shard_dir)


def test_load_shard_rejects_wrong_dtype(shard_dir: Path) -> None:
    y = load_file(str(shard_dir / "test.safetensors"))["y"]
    rewrite(shard_dir / "test.safetensors", y=y.to(torch.int32))
    with pytest.raises(ValueError, match=r"'y' is torch\.int32"):
        load_shard(shard_dir)


def test_load_shard_rejects_missing_tensor(shard_dir: Path) -> None:
    tensors = load_file(str(shard_dir / "train.safetensors"))
    del tensors["y_true"]
    save_file(tensors, str(shard_dir / "train.safetensors"))
    with pytest.raises(ValueError, match="missing tensor 'y_true'"):
        load_shard(shard_dir)


def test_load_shard_rejects_corrupt_and_missing_files(shard_dir: Path) -> None:
    (shard_dir / "train.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_shard(shard_dir)
    (shard_dir / "shard.json").unlink()
    with pytest.raises(ValueError, match=r"shard\.json: missing"):
        load_shard(shard_dir)


def test_load_shard_rejects_bad_meta(shard_dir: Path) -> None:
    meta = json.loads((shard_dir / "shard.json").read_text())
    meta["input_shape"] = [1, 28, 28]
    (shard_dir / "shard.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="meta says"):
        load_shard(shard_dir)
    meta["num_classes"] = "ten"
    (shard_dir / "shard.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_classes"):
        load_shard(shard_dir)


def test_load_split_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing split file"):
        load_split(tmp_path / "absent.safetensors", 1.0)
