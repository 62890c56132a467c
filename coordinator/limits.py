"""One table of bounds on what a caller sends: every string, bytes, repeated and map field and
every 64-bit integer of the requests the coordinator serves, the metadata it reads, and the
collections that grow with what callers do.

The answers decorator (rpc_errors.answers) checks each request, each streamed chunk and the
call's metadata against it before a handler runs, so nothing unbounded reaches state, logs,
metrics or messages. A refusal is INVALID_ARGUMENT naming the field and its bound, with at
most a short escaped preview of what was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fused.common.ml.schema import MAX_SCHEMA_BYTES
from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.common.runtime.logs import clip

PACKAGE = "fused.v1."
ID_CHARS = 64  # participant, job, task and version ids; a sha256 digest is 64 hex digits
NAME_CHARS = 64  # data set, model, method, dtype, aggregator and agent version names
TENSOR_CHARS = 256  # a parameter tensor's name
MAX_COUNT = 2**31 - 1  # samples, examples, classes: far above a shard, far below SQLite's 2^63
MAX_CLASSES = 10_000
MAX_TENSORS = 10_000  # parameter tensors a model may name (layers, sensitivity distances)
MAX_SAMPLE_IDS = 50_000  # a forget set: one CIFAR-10 training set; more bloats the job record
MAX_OFFSET = 2**62  # byte offsets and sizes
MAX_SEED = 2**63 - 1  # seeds and sequence numbers: what SQLite's INTEGER holds
MAX_REASON_CHARS = 512  # a participant's error report (agents send at most 500): a
# round record holds one per failed participant, a failed job's reason all of them
MAX_INLINE_BLOBS = 4  # artifacts one result may carry inline (checked by the handler)
PREVIEW_CHARS = 16  # of a refused string, in the answer

# State that grows with what callers do, bounded too.
ACCOUNTED_PER_ROUND = 10_000  # participants one job round's byte accounting holds
PARTICIPANT_LABELS = 10_000  # distinct participant label values on the wire metrics


@dataclass(frozen=True)
class Limit:
    """Bounds of one field. For a repeated field, `chars`, `low` and `high` hold for each
    entry and `items` for their number; for a map, `chars` holds for its keys."""

    chars: int | None = None  # a string's characters, a bytes field's bytes
    items: int | None = None  # entries of a repeated or map field
    low: int | None = None  # an integer's least value
    high: int | None = None  # an integer's greatest value
    text: bool = True  # strings: printable only, no control characters (ids, names)


ID = Limit(chars=ID_CHARS)
NAME = Limit(chars=NAME_CHARS)
COUNT = Limit(high=MAX_COUNT)
OFFSET = Limit(high=MAX_OFFSET)
SEED = Limit(high=MAX_SEED)
PER_CLASS = Limit(items=MAX_CLASSES, high=MAX_COUNT)
TENSOR_NAMES = Limit(chars=TENSOR_CHARS, items=MAX_TENSORS)

# Message field (without the package) -> its bounds. tests/unit/test_limits.py checks that
# every string, bytes, repeated, map and 64-bit field of every request has an entry.
FIELDS: Mapping[str, Limit] = {
    # participant service
    "RegisterRequest.participant_id": ID,
    "RegisterRequest.agent_version": NAME,
    "DataSummary.dataset": NAME,
    "DataSummary.class_counts": PER_CLASS,
    "DataSummary.num_train": COUNT,
    "DataSummary.num_test": COUNT,
    "DataSummary.workload": NAME,
    "DataSummary.workload_version": NAME,
    "DataSummary.tensor_schema": Limit(chars=MAX_SCHEMA_BYTES, text=False),  # checked: JSON
    "DataSummary.schema_digest": ID,
    "DataSummary.workload_error": Limit(chars=MAX_REASON_CHARS, text=False),
    "HeartbeatRequest.participant_id": ID,
    "HeartbeatRequest.task_id": ID,
    "PullTaskRequest.participant_id": ID,
    "PushResultRequest.participant_id": ID,
    "PushResultRequest.task_id": ID,
    "TrainResult.update_blob_id": ID,
    "TrainResult.num_examples": COUNT,
    "EvalResult.correct": PER_CLASS,
    "EvalResult.total": PER_CLASS,
    "EvalResult.forget_correct": COUNT,
    "EvalResult.forget_total": COUNT,
    "EvalResult.test_losses": Limit(items=64, high=MAX_COUNT),
    "EvalResult.forget_losses": Limit(items=64, high=MAX_COUNT),
    "SensitivityResult.distances": TENSOR_NAMES,
    "SensitivityResult.num_examples": COUNT,
    "SensitivityResult.forget_distances": TENSOR_NAMES,
    "SensitivityResult.forget_examples": COUNT,
    "TaskError.message": Limit(chars=MAX_REASON_CHARS, text=False),  # free text, escaped later
    "InlineBlob.blob_id": ID,
    "InlineBlob.data": Limit(chars=4 << 20, text=False),  # inline_max_bytes holds it first
    "DownloadBlobRequest.blob_id": ID,
    "DownloadBlobRequest.offset": OFFSET,
    "UploadStatusRequest.blob_id": ID,
    "UploadStatusRequest.job_id": ID,
    "BlobChunk.blob_id": ID,
    "BlobChunk.offset": OFFSET,
    "BlobChunk.data": Limit(chars=4 << 20),  # the gRPC message limit holds it first
    "BlobChunk.total_size": OFFSET,
    "BlobChunk.job_id": ID,
    # control service
    "GetJobRequest.job_id": ID,
    "CancelJobRequest.job_id": ID,
    "WatchJobRequest.job_id": ID,
    "WatchJobRequest.after_seq": SEED,
    "VersionRequest.version_id": ID,
    "ExportModelRequest.version_id": ID,
    "StartEvaluationRequest.version_id": ID,
    "TrainingSpec.model": NAME,
    "TrainingSpec.seed": SEED,
    "TrainingSpec.init_version": ID,
    "TrainingSpec.init_weights": ID,
    "WithdrawalRequest.entry_id": ID,
    "ForgettingRequest.participant_id": ID,
    "ForgettingRequest.sample_ids": Limit(items=MAX_SAMPLE_IDS, low=0, high=MAX_COUNT),
    "ForgetDecision.request_id": ID,
    "ForgetDecision.reason": Limit(chars=200),
    "DropVersionsRequest.version_ids": Limit(chars=ID_CHARS, items=1000),
    "ConsolidationSpec.base_version": ID,
    "ConsolidationSpec.seed": SEED,
    "UnlearningSpec.base_version": ID,
    "UnlearningSpec.method": NAME,
    "UnlearningSpec.layers": TENSOR_NAMES,
    "UnlearningSpec.seed": SEED,
    "UnlearningSpec.upload_dtype": NAME,
    "UnlearningSpec.selection": NAME,
    "TrainConfig.seed": SEED,
    "ForgetSpec.paradigm": NAME,
    "ForgetSpec.participant_id": ID,
    "ForgetSpec.sample_ids": Limit(items=MAX_SAMPLE_IDS, low=0, high=MAX_COUNT),
    "AggregationPolicy.aggregator": NAME,
    "ParticipantRequest.participant_id": ID,
    "BlockParticipantRequest.participant_id": ID,
    "BlockParticipantRequest.reason": Limit(chars=200),
}
_BY_FULL_NAME = {PACKAGE + name: limit for name, limit in FIELDS.items()}

# Metadata the coordinator reads (values are bounded by gRPC to a few KiB in all; these keep
# each one to what an honest agent sends).
METADATA: Mapping[str, int] = {
    MD_PARTICIPANT: ID_CHARS,
    MD_JOB: ID_CHARS,
    MD_PHASE: 32,
    MD_ROUND: 10,
}


class LimitError(ValueError):
    """A request outside the table (answered INVALID_ARGUMENT)."""


def check_request(message: Message) -> None:
    """Raise LimitError for the first field of `message`, nested ones included, outside its
    bounds."""
    for field, value in message.ListFields():
        limit = _BY_FULL_NAME.get(field.full_name)
        name = field.full_name.removeprefix(PACKAGE)
        if _is_map(field):
            _check_map(name, value, limit)
        elif field.is_repeated:
            _check_items(name, len(value), limit)
            if field.message_type is not None or not _all_within(value, limit):
                for i, entry in enumerate(value):  # name the first entry outside
                    _check_value(f"{name}[{i}]", entry, limit)
        else:
            _check_value(name, value, limit)


def check_metadata(pairs: Iterable[tuple[str, Any]]) -> None:
    """Raise LimitError for metadata the coordinator reads that is longer than the table's."""
    for key, value in pairs:
        bound = METADATA.get(key)
        if bound is not None and len(value) > bound:
            raise LimitError(f"metadata {key} is {_long(value)}; the limit is {bound}")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _check_map(name: str, value: Any, limit: Limit | None) -> None:
    _check_items(name, len(value), limit)
    for key in value:
        _check_value(f"{name} key", key, limit)
        if isinstance(value[key], Message):
            check_request(value[key])


def _all_within(values: Any, limit: Limit | None) -> bool:
    """Whether every entry of a repeated scalar field is within `limit`, in C loops (a
    10,000-class count list costs what one entry does in Python)."""
    if limit is None or not values or isinstance(values[0], bool | float):
        return True
    if isinstance(values[0], int):
        high_ok = limit.high is None or max(values) <= limit.high
        return high_ok and (limit.low is None or min(values) >= limit.low)
    short = limit.chars is None or max(map(len, values)) <= limit.chars
    text = isinstance(values[0], str) and limit.text
    return short and not (text and not all(map(str.isprintable, values)))


def _check_items(name: str, count: int, limit: Limit | None) -> None:
    if limit is not None and limit.items is not None and count > limit.items:
        raise LimitError(f"{name} has {count} entries; the limit is {limit.items}")


def _check_value(name: str, value: Any, limit: Limit | None) -> None:
    if isinstance(value, Message):
        check_request(value)
    elif limit is None or isinstance(value, bool | float):
        return
    elif isinstance(value, int):
        _check_int(name, value, limit)
    elif isinstance(value, str | bytes):
        _check_chars(name, value, limit)


def _check_int(name: str, value: int, limit: Limit) -> None:
    if limit.high is not None and value > limit.high:
        raise LimitError(f"{name} {value} is above the limit of {limit.high}")
    if limit.low is not None and value < limit.low:
        raise LimitError(f"{name} {value} is below the least value {limit.low}")


def _check_chars(name: str, value: str | bytes, limit: Limit) -> None:
    if limit.chars is not None and len(value) > limit.chars:
        raise LimitError(f"{name} is {_long(value)}; the limit is {limit.chars}")
    if isinstance(value, str) and limit.text and not value.isprintable():
        at = next(i for i, c in enumerate(value) if not c.isprintable())
        raise LimitError(f"{name} holds a control character at position {at}")


def _long(value: str | bytes) -> str:
    """How long `value` is, with a short escaped preview of a string (never the value)."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes long"
    more = "..." if len(value) > PREVIEW_CHARS else ""
    return f"{len(value)} characters long ('{clip(value[:PREVIEW_CHARS])}{more}')"
