"""The Flower side of `bench.flower_compare`: a server and a client, run by the Flower
virtual environment's Python (`python -m bench.flower_side server|client ...`), importing this
repository's model and training code read-only so both systems train the same model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

AGGREGATIONS = ("flwr", "fused")  # Flower's stock FedAvg, or FUSED's coordinator's sum
SERVER_ROLE = "server"
CLIENT_ROLE = "client"
# What the two roles import from this repository. None may import generated protobuf code
# (fused.proto): it is built for the project's protobuf, and Flower pins an older runtime.
REPO_MODULES = (
    "fused.common.domain.train_config",
    "fused.common.ml.data.shards",
    "fused.common.ml.models",
    "fused.coordinator.engine.round_sum",
    "fused.participant.executor",
    "fused.participant.site",
)


def fused_mean(names: Sequence[str], results: Sequence[tuple[list[Any], int]]) -> list[Any]:
    """The sample-weighted mean as FUSED's coordinator computes it (`StreamedFedAvg`: an
    exact integer sum, so arrival order does not matter), as numpy arrays in `names` order."""
    import numpy as np
    import torch

    from fused.coordinator.engine.round_sum import Contribution, StreamedFedAvg

    states = {
        str(i): {
            n: torch.from_numpy(np.array(a, copy=True)) for n, a in zip(names, arrays, strict=True)
        }
        for i, (arrays, _) in enumerate(results)
    }
    total = StreamedFedAvg(load=states.__getitem__)
    final = [Contribution(key, key, n) for key, (_, n) in zip(states, results, strict=True)]
    for contribution in final:
        total.fold(contribution, states[contribution.blob_id])
    mean = total.finish(final)
    return [mean[n].numpy() for n in names]


def _strategy_class(fl: Any, aggregation: str, names: Sequence[str]) -> Any:
    """Flower's FedAvg, or with `fused` aggregation the same with FUSED's mean: both systems
    then compute the same bits, which shows they ran the same job (Flower's own mean is a
    float32 sum in arrival order, not even the same from run to run)."""
    if aggregation == "flwr":
        return fl.server.strategy.FedAvg
    to_arrays, to_parameters = fl.common.parameters_to_ndarrays, fl.common.ndarrays_to_parameters

    class SameMean(fl.server.strategy.FedAvg):  # type: ignore[misc]
        def aggregate_fit(
            self, server_round: int, results: list[Any], failures: list[Any]
        ) -> tuple[Any, dict[str, Any]]:
            if failures or not results:
                return None, {}
            arrays = [(to_arrays(res.parameters), res.num_examples) for _, res in results]
            mean = to_parameters(fused_mean(names, arrays))
            metrics = [(res.num_examples, res.metrics) for _, res in results]
            return mean, self.fit_metrics_aggregation_fn(metrics)

    return SameMean


def flower_server(argv: Sequence[str]) -> int:
    import flwr as fl  # type: ignore[import-not-found,unused-ignore]
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from fused.common.ml.models import init_model

    parser = argparse.ArgumentParser(prog=SERVER_ROLE)
    for name in ("--listen", "--model", "--result", "--weights"):
        parser.add_argument(name, required=True)
    for name in ("--clients", "--rounds", "--seed", "--num-classes"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="flwr")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    state = init_model(args.model, args.num_classes, args.seed).state_dict()
    names = list(state)
    manager = fl.server.client_manager.SimpleClientManager()
    started: list[float] = []
    finished: list[float] = []

    def fit_config(server_round: int) -> dict[str, int]:
        if server_round == 1 and not manager.wait_for(args.clients, timeout=300):
            raise RuntimeError(f"fewer than {args.clients} clients connected")
        started.append(time.time())  # round starts once every client is there
        return {"server_round": server_round, "seed": args.seed}

    def fit_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        finished.append(time.time())  # called by aggregate_fit after averaging
        return {}

    strategy = _strategy_class(fl, args.aggregation, names)(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # no federated evaluation between rounds
        min_fit_clients=args.clients,
        min_available_clients=args.clients,
        on_fit_config_fn=fit_config,
        fit_metrics_aggregation_fn=fit_metrics,
        accept_failures=False,
        initial_parameters=fl.common.ndarrays_to_parameters(
            [t.detach().numpy() for t in state.values()]
        ),
    )
    server = fl.server.Server(client_manager=manager, strategy=strategy)
    fl.server.start_server(
        server_address=args.listen,
        server=server,
        config=fl.server.ServerConfig(num_rounds=args.rounds),
    )
    if len(finished) != args.rounds:
        raise RuntimeError(f"{len(finished)} of {args.rounds} rounds aggregated")
    final = fl.common.parameters_to_ndarrays(server.parameters)
    save_file({n: np.ascontiguousarray(a) for n, a in zip(names, final, strict=True)}, args.weights)
    result = {
        "flwr_version": fl.__version__,
        "round_started": started,
        "round_finished": finished,
        "model_payload_bytes": sum(len(t) for t in server.parameters.tensors),
        "dtypes": sorted({str(a.dtype) for a in final}),
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def flower_client(argv: Sequence[str]) -> int:
    import flwr as fl  # type: ignore[import-not-found,unused-ignore]
    import numpy as np
    import torch

    from fused.common.domain.train_config import TrainConfig, task_seed
    from fused.common.ml.data.shards import load_shard
    from fused.common.ml.models import build_model
    from fused.participant.executor import local_update
    from fused.participant.site import shard_site

    parser = argparse.ArgumentParser(prog=CLIENT_ROLE)
    for name in ("--server", "--shard", "--train", "--model"):
        parser.add_argument(name, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as a FUSED participant agent (its --threads default)

    shard = load_shard(Path(args.shard))
    pid = shard.meta.participant_id
    base = TrainConfig(**json.loads(args.train))
    names = list(build_model(args.model, args.num_classes).state_dict())

    class Participant(fl.client.NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: dict[str, Any]) -> list[Any]:
            model = build_model(args.model, args.num_classes)
            return [t.detach().numpy() for t in model.state_dict().values()]

        def fit(
            self, parameters: list[Any], config: dict[str, Any]
        ) -> tuple[list[Any], int, dict[str, Any]]:
            weights = {
                n: torch.from_numpy(np.array(a, copy=True))
                for n, a in zip(names, parameters, strict=True)
            }
            seed = task_seed(int(config["seed"]), int(config["server_round"]), pid)
            cfg = dataclasses.replace(base, seed=seed)
            state, stats = local_update(shard_site(shard), weights, cfg)
            arrays = [t.numpy() for t in state.values()]
            return arrays, stats.num_examples, {"loss": stats.mean_loss}

        def evaluate(
            self, parameters: list[Any], config: dict[str, Any]
        ) -> tuple[float, int, dict[str, Any]]:
            raise RuntimeError("evaluation is off in this benchmark")

    fl.client.start_client(server_address=args.server, client=Participant().to_client())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    roles = {SERVER_ROLE: flower_server, CLIENT_ROLE: flower_client}
    if not args or args[0] not in roles:
        print(f"usage: python -m bench.flower_side {{{SERVER_ROLE},{CLIENT_ROLE}}} ...")
        return 2
    return roles[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
