"""Who takes part in the hostile corpus, the status codes it expects, the attack that answers
each task mallory gets, and the job specs sized to those attacks."""

from __future__ import annotations

import grpc

from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.participant.site import builtin_summary
from fused.proto.v1 import participant_pb2

HONEST = ("p0", "p1")
MALLORY = "mallory"
EVE = "eve"  # holds a valid token but never registers
MAX_UPLOAD = 1 << 20  # --max-upload-mb 1
MIN_CASES = 30
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OK = grpc.StatusCode.OK
TRAIN_KIND = participant_pb2.TASK_KIND_TRAIN
EVAL_KIND = participant_pb2.TASK_KIND_EVALUATE
SENSITIVITY_KIND = participant_pb2.TASK_KIND_SENSITIVITY
ADAPTER_KIND = participant_pb2.TASK_KIND_ADAPTER_TRAIN
SUMMARY = builtin_summary("mlp", [10] * 10, 20, "digits")
TRAIN = TrainConfig(local_epochs=1, lr=0.05, batch_size=32)
NOT_OPEN = "accepted=False task"

# What each task mallory gets is answered with, and the message that must come back.
# Training tasks: (attack, expected detail); "push:" attacks push a crafted result, the others
# upload the bad_updates() payload of that name and push a result naming it.
TRAIN_ATTACKS = [
    ("push:foreign_upload", f"{MALLORY} has not uploaded"),
    ("push:zero_examples", "num_examples 0 is not within the 100 training samples"),
    ("push:too_many_examples", "num_examples 1000000 is not within the 100 training samples"),
    ("push:eval_for_train", "expected a training result"),
    ("valid:nan_loss", "mean_loss nan is not a finite, non-negative number"),
    ("valid:inf_seconds", "seconds inf is not a finite, non-negative number"),
    ("nan", "1 of 8192 values are not finite (NaN or Inf)"),
    ("inf", "1 of 128 values are not finite (NaN or Inf)"),
    ("shape", "expected shape [128, 64], got [64, 128]"),
    ("dtype", "expected dtype float32, got float64"),
    ("missing", "missing ['net.0.bias']"),
    ("extra", "unexpected ['backdoor.weight']"),
    ("duplicate", "header has duplicate key 'net.0.bias'"),
    ("header_size", "header length 2097152 exceeds the limit of 1048576"),
    ("truncated", "payload is truncated: 7 bytes, need at least 8"),
    ("cut", "out of range for a data buffer"),
    ("trailing", "but the data buffer holds"),
    ("unknown_dtype", "unknown dtype 'F8_E4M3'"),
    ("size_lie", "shape [1] of F32 needs 4 bytes"),
    ("not_json", "header is not valid JSON"),
]
EVAL_ATTACKS = [
    ("wrong class count", [1, 1, 1], [5, 5, 5], 0, 0, "evaluation counts have 3 classes"),
    ("more correct than total", [6] + [0] * 9, [5] * 10, 0, 0, "correct exceeds total"),
    ("forget_correct > forget_total", [0] * 10, [5] * 10, 3, 2, "forget_correct exceeds"),
]
ADAPTER_ATTACKS = [
    ("bomb", "zstd frame declares 16777216 bytes"),
    ("no_content_size", "does not declare its content size"),
    ("oversized", "bytes, more than the limit"),
    ("not_v3", "not a fused-adapter-v3 payload"),
    ("v2_garbage", "adapter payload (fused-adapter-v2)"),
    ("two_frames", "could not be decompressed"),
    ("mask", "adapter was built for a different mask"),
    ("nan", "is not finite"),
    ("count", "mask positions"),
    ("dtype", "not the job's value dtype"),
]

TRAINING = TrainingSpec(
    rounds=len(TRAIN_ATTACKS),
    train=TRAIN,
    min_participants=len(HONEST),
    round_deadline_s=60,
    wait_for_participants_s=30,
    seed=7,
    evaluate_each_round=False,
)
UNLEARNING = UnlearningSpec(
    forget=ForgetSpec("class", class_label=3),
    config=FusedConfig(top_k=2, density=0.1),
    rounds=len(ADAPTER_ATTACKS),
    train=TRAIN,
    min_participants=len(HONEST),
    round_deadline_s=60,
    wait_for_participants_s=30,
    seed=11,
    evaluate_each_round=False,
)
