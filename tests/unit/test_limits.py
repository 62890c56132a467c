"""The table of input bounds: it covers every unbounded field of every request, and each
refusal names the field and its bound in a short message that never echoes the input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fused.coordinator.limits import (
    FIELDS,
    MAX_COUNT,
    PACKAGE,
    LimitError,
    check_metadata,
    check_request,
)
from fused.proto.v1 import common_pb2, control_pb2, participant_pb2

SERVICES = (
    participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"],
    control_pb2.DESCRIPTOR.services_by_name["ControlService"],
)
# Fields whose size the wire type alone does not bound (32-bit integers, doubles and bools do).
UNBOUNDED = {
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
MB = 1 << 20


def request_fields() -> Iterator[FieldDescriptor]:
    """Every field of every request message, nested messages included."""
    seen: set[str] = set()
    todo: list[Descriptor] = [m.input_type for s in SERVICES for m in s.methods]
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for field in message.fields:
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                todo.append(field.message_type)
            else:
                yield field


def needs_a_bound(field: FieldDescriptor) -> bool:
    return field.type in UNBOUNDED or field.is_repeated


def test_every_unbounded_request_field_has_a_limit() -> None:
    missing = [
        f.full_name for f in request_fields() if needs_a_bound(f) and f.full_name not in names()
    ]
    assert not missing, "add these to coordinator/limits.py FIELDS:\n" + "\n".join(missing)


def test_every_limit_names_a_request_field() -> None:
    known = {f.full_name for f in request_fields()}
    stale = sorted(name for name in names() if name not in known)
    assert not stale, stale


def names() -> set[str]:
    return {PACKAGE + name for name in FIELDS}


def summary(
    dataset: str = "digits",
    class_counts: tuple[int, ...] = (10,) * 10,
    num_train: int = 100,
    num_test: int = 20,
) -> participant_pb2.RegisterRequest:
    data = participant_pb2.DataSummary(
        dataset=dataset, class_counts=class_counts, num_train=num_train, num_test=num_test
    )
    return participant_pb2.RegisterRequest(participant_id="p0", agent_version="0.1.0", data=data)


CASES: list[tuple[str, Message, str | None]] = [
    ("an honest registration", summary(), None),
    ("num_train at the bound", summary(class_counts=(MAX_COUNT,), num_train=MAX_COUNT), None),
    (
        "a 1.1-million-character data set",
        summary(dataset="d" * 1_100_000),
        "DataSummary.dataset is 1100000 characters long ('dddddddddddddddd...'); the limit is 64",
    ),
    (
        "num_train of 2^63 (SQLite overflows)",
        summary(num_train=2**63),
        "DataSummary.num_train 9223372036854775808 is above the limit of 2147483647",
    ),
    (
        "a class count of 2^62",
        summary(class_counts=(2**62,) + (10,) * 9, num_train=2**62 + 90),
        "DataSummary.class_counts[0] 4611686018427387904 is above the limit of 2147483647",
    ),
    (
        "num_test of 2^64 - 1",
        summary(num_test=2**64 - 1),
        "DataSummary.num_test 18446744073709551615 is above the limit of 2147483647",
    ),
    (
        "10,001 classes",
        summary(class_counts=(1,) * 10_001, num_train=10_001),
        "DataSummary.class_counts has 10001 entries; the limit is 10000",
    ),
    (
        "an agent version with a newline",
        participant_pb2.RegisterRequest(participant_id="p0", agent_version="1.0\nforged"),
        "RegisterRequest.agent_version holds a control character at position 3",
    ),
    (
        "a 1 MB task id",
        participant_pb2.PushResultRequest(participant_id="p0", task_id="t" * MB),
        "PushResultRequest.task_id is 1048576 characters long ('tttttttttttttttt...'); "
        "the limit is 64",
    ),
    (
        "a task id with a newline",
        participant_pb2.PushResultRequest(participant_id="p0", task_id="t\nforged"),
        "PushResultRequest.task_id holds a control character at position 1",
    ),
    (
        "an error report with newlines (free text, escaped where it is logged)",
        participant_pb2.PushResultRequest(
            participant_id="p0", task_id="t", error=participant_pb2.TaskError(message="a\nb")
        ),
        None,
    ),
    (
        "an error report of 513 characters",
        participant_pb2.PushResultRequest(
            participant_id="p0", task_id="t", error=participant_pb2.TaskError(message="e" * 513)
        ),
        "TaskError.message is 513 characters long ('eeeeeeeeeeeeeeee...'); the limit is 512",
    ),
    (
        "an evaluation count of 2^40",
        participant_pb2.PushResultRequest(
            task_id="t", eval=participant_pb2.EvalResult(correct=[1, 2**40], total=[5, 5])
        ),
        "EvalResult.correct[1] 1099511627776 is above the limit of 2147483647",
    ),
    (
        "a sensitivity map key of 300 characters",
        participant_pb2.PushResultRequest(
            task_id="t", sensitivity=participant_pb2.SensitivityResult(distances={"k" * 300: 1})
        ),
        "SensitivityResult.distances key is 300 characters long ('kkkkkkkkkkkkkkkk...'); "
        "the limit is 256",
    ),
    (
        "an upload chunk naming a 65-character job",
        common_pb2.BlobChunk(blob_id="ab" * 32, job_id="j" * 65),
        "BlobChunk.job_id is 65 characters long ('jjjjjjjjjjjjjjjj...'); the limit is 64",
    ),
    (
        "a watch from sequence 2^64 - 1",
        control_pb2.WatchJobRequest(job_id="job-1", after_seq=2**64 - 1),
        "WatchJobRequest.after_seq 18446744073709551615 is above the limit of 9223372036854775807",
    ),
    (
        "a 1 MB job id",
        control_pb2.GetJobRequest(job_id="j" * MB),
        "GetJobRequest.job_id is 1048576 characters long ('jjjjjjjjjjjjjjjj...'); the limit is 64",
    ),
    (
        "20,000 layers",
        control_pb2.StartUnlearningRequest(
            spec=control_pb2.UnlearningSpec(layers=[f"l{i}" for i in range(20_000)])
        ),
        "UnlearningSpec.layers has 20000 entries; the limit is 10000",
    ),
    (
        "a layer name with a newline",
        control_pb2.StartUnlearningRequest(
            spec=control_pb2.UnlearningSpec(layers=["net.0.weight", "net.2\n.weight"])
        ),
        "UnlearningSpec.layers[1] holds a control character at position 5",
    ),
    (
        "a negative sample id",
        control_pb2.StartUnlearningRequest(
            spec=control_pb2.UnlearningSpec(
                forget=common_pb2.ForgetSpec(paradigm="samples", sample_ids=[3, -1])
            )
        ),
        "ForgetSpec.sample_ids[1] -1 is below the least value 0",
    ),
    (
        "a training seed of 2^64 - 1",
        control_pb2.StartTrainingRequest(
            spec=control_pb2.TrainingSpec(train=common_pb2.TrainConfig(seed=2**64 - 1))
        ),
        "TrainConfig.seed 18446744073709551615 is above the limit of 9223372036854775807",
    ),
]


@pytest.mark.parametrize(("name", "message", "refusal"), CASES, ids=[c[0] for c in CASES])
def test_requests_against_the_table(name: str, message: Message, refusal: str | None) -> None:
    if refusal is None:
        check_request(message)
        return
    with pytest.raises(LimitError) as refused:
        check_request(message)
    assert str(refused.value) == refusal
    assert len(str(refused.value)) < 160 and "\n" not in str(refused.value)


METADATA_CASES: list[tuple[tuple[tuple[str, str], ...], str | None]] = [
    ((("fused-participant", "p0"), ("fused-job", "job-1"), ("fused-round", "3")), None),
    ((("x-custom", "v" * 5000),), None),  # not read by the coordinator
    (
        (("fused-round", "9" * 11),),
        "metadata fused-round is 11 characters long ('99999999999'); the limit is 10",
    ),
    (
        (("fused-participant", "p" * 4000),),
        "metadata fused-participant is 4000 characters long ('pppppppppppppppp...'); "
        "the limit is 64",
    ),
]


@pytest.mark.parametrize(("pairs", "refusal"), METADATA_CASES)
def test_metadata_against_the_table(
    pairs: tuple[tuple[str, str], ...], refusal: str | None
) -> None:
    if refusal is None:
        check_metadata(pairs)
        return
    with pytest.raises(LimitError) as refused:
        check_metadata(pairs)
    assert str(refused.value) == refusal
