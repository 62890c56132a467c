"""What this participant serves: one workload on its local data, opened once at startup, and
the offer it declares at registration (workload, version, tensor schema and its digest, counts).

A workload that cannot be opened (it does not import, raises while building, finds no data)
still yields an offer, carrying the cause: the agent registers with it and stays up, and the
coordinator names this participant and the cause when a job asks for that workload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fused.common.codecs.tensor_codec import TensorSchema, schema_of
from fused.common.ml.data.shards import Shard, read_shard_meta
from fused.common.ml.workloads import (
    LocalData,
    Workload,
    WorkloadError,
    canonical_json,
    default_for,
    resolve_workload,
)

if TYPE_CHECKING:  # imported where used: a site serves processes without this protobuf
    from fused.proto.v1 import participant_pb2


@dataclass(frozen=True)
class Site:
    """A workload (for its data's class count) and this participant's data for it."""

    participant_id: str
    workload: Workload
    data: LocalData

    @cached_property
    def weights_schema(self) -> TensorSchema:
        """The exact tensors every task's model must arrive with (built once, not per task)."""
        return schema_of(self.workload.make_model().state_dict())

    @property
    def buckets(self) -> int:
        """Evaluation buckets: one per class, or one for a workload without classes."""
        return self.data.num_classes or 1

    def class_counts(self) -> list[int]:
        """Training samples per bucket, by the labels the holder trains on."""
        if self.data.num_classes is None:
            return [len(self.data.train)]
        counts = torch.bincount(self.data.train.y, minlength=self.data.num_classes)
        return [int(c) for c in counts]

    def check_task(self, model_name: str, num_classes: int) -> None:
        """Raise ValueError unless a task names this site's workload and class count."""
        if model_name != self.workload.name:
            raise ValueError(f"this participant serves {self.workload.name!r}, not {model_name!r}")
        if num_classes != self.buckets:
            raise ValueError(
                f"the task is for {num_classes} classes, this participant's "
                f"{self.workload.name!r} data has {self.buckets}"
            )


@dataclass(frozen=True)
class Offer:
    """What the agent declares at registration: raw data never leaves, only counts."""

    workload: str  # the name tasks will use ("" when the reference did not resolve)
    version: str
    source: str  # what the data is, for listings
    num_classes: int  # 0: no classes
    schema_json: bytes  # canonical JSON of the tensor schema
    schema_digest: str  # sha256 hex of schema_json
    class_counts: tuple[int, ...]
    num_train: int
    num_test: int
    error: str = ""  # why the workload cannot run here ("" = it can)


def open_site(participant_id: str, reference: str, data_dir: Path) -> Site:
    """Resolve `reference`, load the data from `data_dir`, size the workload to its classes.
    Any failure is a WorkloadError naming the reference and the cause."""
    workload = resolve_workload(reference)
    try:
        data = workload.load_data(data_dir)
        if len(data.train) == 0:
            raise ValueError(f"no training samples in {data_dir}")
        sized = workload if data.num_classes is None else workload.with_classes(data.num_classes)
    except WorkloadError:
        raise
    except Exception as exc:  # the user's loader: any error is the workload's failure
        raise WorkloadError(reference, f"loading data from {data_dir} failed: {exc!r}") from exc
    return Site(participant_id, sized, data)


def offer_of(site: Site) -> Offer:
    """The offer of a working site; building its model here is the schema check."""
    try:
        return _offer(
            site.workload,
            site.data.source,
            site.data.num_classes or 0,
            site.class_counts(),
            len(site.data.test),
        )
    except WorkloadError:
        raise
    except Exception as exc:  # the user's model code
        raise WorkloadError(site.workload.name, f"building the model failed: {exc!r}") from exc


def _offer(
    workload: Workload, source: str, num_classes: int, counts: Sequence[int], num_test: int
) -> Offer:
    """A workload's declaration: its schema's canonical JSON and digest, and the counts."""
    schema = canonical_json(workload.tensor_schema()).encode("ascii")
    return Offer(
        workload=workload.name,
        version=workload.info.version,
        source=source or workload.name,
        num_classes=num_classes,
        schema_json=schema,
        schema_digest=hashlib.sha256(schema).hexdigest(),
        class_counts=tuple(counts),
        num_train=sum(counts),  # one count per class, or the one bucket without classes
        num_test=num_test,
    )


def broken_offer(reference: str, cause: str) -> Offer:
    """The offer of a workload that cannot run here: its name as given, and why."""
    return Offer(reference[:64], "", "", 0, b"", "", (), 0, 0, error=cause[:500])


def shard_site(shard: Shard, participant_id: str = "") -> Site:
    """The built-in workload's site for a `fusedctl data partition` shard already in memory."""
    meta = shard.meta
    workload = resolve_workload(default_for(meta.dataset)).with_classes(meta.num_classes)
    data = LocalData(shard.train, shard.test, meta.num_classes, meta.dataset)
    return Site(participant_id or meta.participant_id, workload, data)


def default_reference(data_dir: Path) -> str:
    """The workload for a folder when none is named: the built-in for a partition shard."""
    try:
        return default_for(read_shard_meta(data_dir).dataset)
    except (OSError, ValueError) as exc:
        raise WorkloadError(
            str(data_dir), f"name a workload (--workload) for data that is not a shard: {exc}"
        ) from exc


def offer_summary(offer: Offer) -> participant_pb2.DataSummary:
    """The offer as the Register call carries it."""
    from fused.proto.v1 import participant_pb2

    return participant_pb2.DataSummary(
        dataset=offer.source,
        class_counts=offer.class_counts,
        num_train=offer.num_train,
        num_test=offer.num_test,
        workload=offer.workload,
        workload_version=offer.version,
        tensor_schema=offer.schema_json,
        schema_digest=offer.schema_digest,
        num_classes=offer.num_classes,
        workload_error=offer.error,
    )


def builtin_summary(
    name: str, class_counts: Sequence[int], num_test: int, source: str = ""
) -> participant_pb2.DataSummary:
    """What an agent serving built-in `name` on data of these counts declares, without the
    data: for processes that speak the protocol themselves (load and fault benches, tests)."""
    workload = resolve_workload(name).with_classes(len(class_counts))
    offer = _offer(workload, source, len(class_counts), class_counts, num_test)
    return offer_summary(offer)
