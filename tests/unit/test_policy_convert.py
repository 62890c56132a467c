"""A job's aggregation policy across the boundaries: the stored spec (including specs stored
before policies existed), the control protocol (unset fields keep their defaults) and
fusedctl's flags; and fusedctl's participant commands."""

from __future__ import annotations

import dataclasses

import pytest

from fused.cli.main import build_parser
from fused.cli.policy import policy_from_args
from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.specs import SpecError, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.rpc.control_convert import (
    policy_from_proto,
    policy_to_proto,
    training_spec_from_proto,
    training_spec_to_proto,
    unlearning_spec_from_proto,
    unlearning_spec_to_proto,
)
from fused.proto.v1 import control_pb2

CUSTOM = AggregationPolicy("trimmed-mean", 0.1, 0.25, 0.0, 0.0)  # zeros: explicitly off


@pytest.mark.parametrize("policy", [AggregationPolicy(), CUSTOM])
def test_policy_round_trips(policy: AggregationPolicy) -> None:
    assert policy_from_proto(policy_to_proto(policy)) == policy
    training = TrainingSpec(policy=policy)
    assert training_spec_from_proto(training_spec_to_proto(training)) == training
    assert TrainingSpec.from_dict(training.to_dict()) == training
    unlearning = UnlearningSpec(ForgetSpec("class", class_label=3), policy=policy)
    assert unlearning_spec_from_proto(unlearning_spec_to_proto(unlearning)) == unlearning
    assert UnlearningSpec.from_dict(unlearning.to_dict()) == unlearning


def test_unset_fields_keep_their_defaults() -> None:
    assert training_spec_from_proto(control_pb2.TrainingSpec()).policy == AggregationPolicy()
    partial = control_pb2.AggregationPolicy(aggregator="median", max_norm=5.0)
    assert policy_from_proto(partial) == AggregationPolicy(aggregator="median", max_norm=5.0)


def test_specs_stored_before_policies_get_the_defaults() -> None:
    stored = TrainingSpec().to_dict()
    del stored["policy"]
    assert TrainingSpec.from_dict(stored).policy == AggregationPolicy()
    forget = UnlearningSpec(ForgetSpec("class", class_label=1)).to_dict()
    del forget["policy"]
    assert UnlearningSpec.from_dict(forget).policy == AggregationPolicy()


def test_specs_validate_their_policy() -> None:
    bad = AggregationPolicy(max_weight_share=2.0)
    for spec in (
        TrainingSpec(policy=bad),
        UnlearningSpec(ForgetSpec("class", class_label=0), policy=bad),
    ):
        with pytest.raises(SpecError, match=r"policy: max_weight_share must be in \(0, 1\]"):
            spec.validate()


def test_fusedctl_policy_flags() -> None:
    parser = build_parser()
    assert policy_from_args(parser.parse_args(["train"])) == AggregationPolicy()
    args = parser.parse_args(
        [
            "unlearn",
            "--class",
            "3",
            "--aggregator",
            "median",
            "--max-norm",
            "50",
            "--norm-factor",
            "0",
        ]
    )
    assert policy_from_args(args) == dataclasses.replace(
        AggregationPolicy(), aggregator="median", max_norm=50.0, norm_factor=0.0
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--aggregator", "krum"])


@pytest.mark.parametrize(
    ("argv", "command", "pid"),
    [
        (["participants"], None, None),
        (["participants", "remove", "p3"], "remove", "p3"),
        (["participants", "block", "mallory", "--reason", "3e38 update"], "block", "mallory"),
        (["participants", "unblock", "mallory"], "unblock", "mallory"),
    ],
)
def test_fusedctl_participant_commands(
    argv: list[str], command: str | None, pid: str | None
) -> None:
    args = build_parser().parse_args(argv)
    assert args.participants_command == command
    assert getattr(args, "participant", None) == pid
    assert args.func.__name__ == f"cmd_{command or 'participants'}"
