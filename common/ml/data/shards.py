"""On-disk shard format: one directory per participant plus a shared global test set.

Layout under a partition directory:
    partition.json                  summary (config, data set, participants, sizes); written last
    <participant_id>/shard.json     ShardMeta
    <participant_id>/train.safetensors, test.safetensors   x uint8, y / y_true / ids int64
    global-test/test.safetensors    the untouched source test set, for central evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.sources import SourceData
from fused.common.ml.data.tensors import TensorData

FORMAT_VERSION = 1
PARTITION_FILE = "partition.json"
SHARD_FILE = "shard.json"
TRAIN_FILE = "train.safetensors"
TEST_FILE = "test.safetensors"
GLOBAL_TEST_DIR = "global-test"

_TENSOR_DTYPES: dict[str, torch.dtype] = {
    "x": torch.uint8,
    "y": torch.int64,
    "y_true": torch.int64,
    "ids": torch.int64,
}


@dataclass(frozen=True)
class ShardMeta:
    participant_id: str
    dataset: str
    num_classes: int
    input_shape: tuple[int, int, int]
    scale: float
    pixel_max: int
    attacker: bool  # labels flipped to (y_true + 1) % num_classes on both splits
    backdoor_ids: tuple[int, ...]  # train sample ids carrying the trigger, relabelled to target
    backdoor_target: int
    trigger_size: int
    seed: int
    alpha: float


@dataclass(frozen=True)
class Shard:
    meta: ShardMeta
    train: TensorData
    test: TensorData

    def class_counts(self) -> list[int]:
        """Train samples per class, by the labels the holder trains on."""
        counts = torch.bincount(self.train.y, minlength=self.meta.num_classes)
        return [int(c) for c in counts]


# --- atomic writes ---------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temp file in the same directory, then rename, so readers never see halves."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_split(path: Path, data: TensorData) -> None:
    tensors = {
        "x": data.x.to(torch.uint8).contiguous(),
        "y": data.y.to(torch.int64).contiguous(),
        "y_true": data.y_true.to(torch.int64).contiguous(),
        "ids": data.ids.to(torch.int64).contiguous(),
    }
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


# --- metadata --------------------------------------------------------------------------------


def meta_to_dict(meta: ShardMeta) -> dict[str, Any]:
    payload = dataclasses.asdict(meta)
    payload["input_shape"] = list(meta.input_shape)
    payload["backdoor_ids"] = list(meta.backdoor_ids)
    payload["format_version"] = FORMAT_VERSION
    return payload


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], src: Path) -> Any:
    value = payload.get(name)
    # bool is an int subclass; reject it where a number is expected.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{src}: field {name!r} missing or not {kind}")
    return value


def _int_tuple(payload: dict[str, Any], name: str, src: Path) -> tuple[int, ...]:
    values = _field(payload, name, list, src)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{src}: field {name!r} must be a list of integers")
    return tuple(values)


def meta_from_dict(payload: dict[str, Any], src: Path) -> ShardMeta:
    """Parse shard.json content; `src` names the file in errors."""
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{src}: unsupported format_version {payload.get('format_version')!r}")
    shape = _int_tuple(payload, "input_shape", src)
    if len(shape) != 3:
        raise ValueError(f"{src}: input_shape must have 3 entries, got {shape}")
    return ShardMeta(
        participant_id=_field(payload, "participant_id", str, src),
        dataset=_field(payload, "dataset", str, src),
        num_classes=_field(payload, "num_classes", int, src),
        input_shape=(shape[0], shape[1], shape[2]),
        scale=float(_field(payload, "scale", (int, float), src)),
        pixel_max=_field(payload, "pixel_max", int, src),
        attacker=_field(payload, "attacker", bool, src),
        backdoor_ids=_int_tuple(payload, "backdoor_ids", src),
        backdoor_target=_field(payload, "backdoor_target", int, src),
        trigger_size=_field(payload, "trigger_size", int, src),
        seed=_field(payload, "seed", int, src),
        alpha=float(_field(payload, "alpha", (int, float), src)),
    )


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return payload


# --- loading ---------------------------------------------------------------------------------


def load_split(path: Path, scale: float) -> TensorData:
    """Read one split file, checking names, dtypes and lengths of its tensors."""
    if not path.is_file():
        raise ValueError(f"{path}: missing split file")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    for name, dtype in _TENSOR_DTYPES.items():
        if name not in tensors:
            raise ValueError(f"{path}: missing tensor {name!r}")
        if tensors[name].dtype != dtype:
            raise ValueError(f"{path}: tensor {name!r} is {tensors[name].dtype}, expected {dtype}")
    x, y, y_true, ids = (tensors[name] for name in _TENSOR_DTYPES)
    if x.ndim != 4 or any(t.ndim != 1 for t in (y, y_true, ids)):
        raise ValueError(f"{path}: x must be (N, C, H, W) and y, y_true, ids must be (N,)")
    if not x.shape[0] == y.shape[0] == y_true.shape[0] == ids.shape[0]:
        lengths = [int(t.shape[0]) for t in (x, y, y_true, ids)]
        raise ValueError(f"{path}: tensor lengths differ (x, y, y_true, ids) = {lengths}")
    return TensorData(x=x, y=y, y_true=y_true, ids=ids, scale=scale)


def _check_split(path: Path, data: TensorData, meta: ShardMeta) -> None:
    if tuple(data.x.shape[1:]) != meta.input_shape:
        raise ValueError(
            f"{path}: images are {tuple(data.x.shape[1:])}, meta says {meta.input_shape}"
        )
    for name, labels in (("y", data.y), ("y_true", data.y_true)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= meta.num_classes):
            raise ValueError(f"{path}: {name} outside 0..{meta.num_classes - 1}")


def read_shard_meta(shard_dir: Path) -> ShardMeta:
    return meta_from_dict(read_json(shard_dir / SHARD_FILE), shard_dir / SHARD_FILE)


def load_shard(shard_dir: Path) -> Shard:
    """Read and validate one participant directory written by `write_partition`."""
    meta = read_shard_meta(shard_dir)
    splits = {}
    for name in (TRAIN_FILE, TEST_FILE):
        splits[name] = load_split(shard_dir / name, meta.scale)
        _check_split(shard_dir / name, splits[name], meta)
    train_ids = set(splits[TRAIN_FILE].ids.tolist())
    if not set(meta.backdoor_ids) <= train_ids:
        raise ValueError(f"{shard_dir}: backdoor_ids not all in the train split")
    return Shard(meta=meta, train=splits[TRAIN_FILE], test=splits[TEST_FILE])


# --- whole partitions ------------------------------------------------------------------------


def partition_summary(
    source: SourceData, shards: list[Shard], config: PartitionConfig
) -> dict[str, Any]:
    """What partition.json holds: enough to find and interpret every shard."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": source.name,
        "num_classes": source.num_classes,
        "input_shape": list(source.input_shape),
        "scale": source.train.scale,
        "pixel_max": source.pixel_max,
        "config": dataclasses.asdict(config),
        "participant_ids": [shard.meta.participant_id for shard in shards],
        "participants": [
            {
                "id": shard.meta.participant_id,
                "train_size": len(shard.train),
                "test_size": len(shard.test),
                "class_counts": shard.class_counts(),
                "attacker": shard.meta.attacker,
                "backdoor_count": len(shard.meta.backdoor_ids),
            }
            for shard in shards
        ],
        "global_test_size": len(source.test),
    }


def write_partition(
    out_dir: Path, source: SourceData, shards: list[Shard], config: PartitionConfig
) -> None:
    """Write every shard, the global test set, then partition.json (its presence = complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard in shards:
        shard_dir = out_dir / shard.meta.participant_id
        shard_dir.mkdir(exist_ok=True)
        write_split(shard_dir / TRAIN_FILE, shard.train)
        write_split(shard_dir / TEST_FILE, shard.test)
        write_json(shard_dir / SHARD_FILE, meta_to_dict(shard.meta))
    global_dir = out_dir / GLOBAL_TEST_DIR
    global_dir.mkdir(exist_ok=True)
    write_split(global_dir / TEST_FILE, source.test)
    write_json(out_dir / PARTITION_FILE, partition_summary(source, shards, config))


def read_partition(out_dir: Path) -> dict[str, Any]:
    """partition.json of a directory written by `write_partition`."""
    summary = read_json(out_dir / PARTITION_FILE)
    if summary.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{out_dir / PARTITION_FILE}: unsupported format_version")
    return summary


def load_global_test(out_dir: Path) -> TensorData:
    """The source test set stored beside the shards, for central evaluation."""
    summary = read_partition(out_dir)
    return load_split(out_dir / GLOBAL_TEST_DIR / TEST_FILE, float(summary["scale"]))
