"""Data layer: source loaders, Dirichlet partitioning and the on-disk shard format."""

from __future__ import annotations

from fused.common.ml.data.partition import (
    apply_trigger,
    dirichlet_partition,
    partition_source,
    partition_to_directory,
)
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import (
    Shard,
    ShardMeta,
    load_global_test,
    load_shard,
    load_split,
    read_partition,
    write_partition,
)
from fused.common.ml.data.sources import (
    DEFAULT_CIFAR10_DIRS,
    DEFAULT_FASHION_MNIST_DIRS,
    SourceData,
    load_cifar10,
    load_digits_source,
    load_fashion_mnist,
    load_source,
)
from fused.common.ml.data.tensors import TensorData

__all__ = [
    "DEFAULT_CIFAR10_DIRS",
    "DEFAULT_FASHION_MNIST_DIRS",
    "PartitionConfig",
    "Shard",
    "ShardMeta",
    "SourceData",
    "TensorData",
    "apply_trigger",
    "dirichlet_partition",
    "load_cifar10",
    "load_digits_source",
    "load_fashion_mnist",
    "load_global_test",
    "load_shard",
    "load_source",
    "load_split",
    "partition_source",
    "partition_to_directory",
    "read_partition",
    "write_partition",
]
