"""The `--aggregator` family of flags that `fusedctl train` and `fusedctl unlearn` share: how a
job aggregates and the plausibility bounds it holds participants to."""

from __future__ import annotations

import argparse

from fused.common.domain.aggregation_policy import AGGREGATOR_NAMES, AggregationPolicy


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    d = AggregationPolicy()
    group = parser.add_argument_group("aggregation and plausibility checks")
    group.add_argument(
        "--aggregator",
        choices=AGGREGATOR_NAMES,
        default=d.aggregator,
        help="fedavg (sample-weighted mean), or coordinate-wise median / trimmed mean",
    )
    group.add_argument(
        "--trim-fraction",
        type=float,
        default=d.trim_fraction,
        help="trimmed-mean: share of values cut at each end of every coordinate",
    )
    group.add_argument(
        "--max-weight-share",
        type=float,
        default=d.max_weight_share,
        help="most share of a round's weight one participant carries, in rounds of 3 or more "
        "results (1 = no cap)",
    )
    group.add_argument(
        "--norm-factor",
        type=float,
        default=d.norm_factor,
        help="refuse an update whose L2 norm is above this multiple of the round's median, "
        "in rounds of 3 or more updates (0 = off)",
    )
    group.add_argument(
        "--max-norm",
        type=float,
        default=d.max_norm,
        help="refuse an update whose L2 norm is above this (0 = off)",
    )


def policy_from_args(args: argparse.Namespace) -> AggregationPolicy:
    return AggregationPolicy(
        aggregator=args.aggregator,
        trim_fraction=args.trim_fraction,
        max_weight_share=args.max_weight_share,
        norm_factor=args.norm_factor,
        max_norm=args.max_norm,
    )
