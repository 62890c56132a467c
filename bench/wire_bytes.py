"""Wire-efficiency benchmark: bytes per round (FedAvg vs FUSED) with real processes on
loopback, adapter upload overhead, position encoding vs the entropy bound, codec throughput,
and moving a 45 MB model by RPC vs a plain socket copy.

    python -m bench.wire_bytes [--quick] [--json-out docs/wire_bytes.json]

Prints JSON (and writes it to --json-out); docs/BENCHMARKS.md is written by hand from it.
Model weights and images are random: byte counts depend on shapes, not on values, except
the adapter uploads, whose zeros and exponents come from training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.raw_participant import chunks, held_task
from bench.round_bytes import CASES, measure_model
from fused.common.codecs.adapter_codec import decode_adapter, encode_adapter
from fused.common.codecs.positions import encode_positions, entropy_bound_bytes
from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.domain.specs import TrainingSpec
from fused.common.ml.adapters import build_layout, mask_indices
from fused.common.ml.models import init_model
from fused.proto.v1 import participant_pb2, participant_pb2_grpc
from fused.tools.launch import LocalFederation


def positions(densities: Sequence[float], n: int) -> list[dict[str, float]]:
    rows = []
    for density in densities:
        idx = mask_indices("layer4.1.conv2.weight", n, density, seed=0)
        size = len(encode_positions(idx, n))
        bound = entropy_bound_bytes(n, int(idx.numel()))
        rows.append(
            {
                "density": density,
                "n": n,
                "bytes": size,
                "bound_bytes": round(bound, 1),
                "ratio": size / bound,
            }
        )
    return rows


def throughput(repeat: int) -> dict[str, float]:
    """MB/s of the model codec on ResNet-18 weights and of the adapter codec."""
    state = init_model("resnet18", 10, 0).state_dict()
    blob = encode_tensors(state)
    mb = len(blob) / 1e6

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat

    layout = build_layout({"w": (512, 512, 3, 3)}, 0.1, seed=0)
    values = {"w": torch.randn(layout.num_values)}
    dead = {"w": values["w"].clone()}  # 2 output channels in 5 dead: 40% zeros, in runs
    dead["w"][layout.indices["w"] // (512 * 9) % 5 < 2] = 0.0
    payload, sparse = encode_adapter(layout, values), encode_adapter(layout, dead)
    amb = layout.num_values * 4 / 1e6
    return {
        "model_mb": mb,
        "model_encode_mb_s": mb / timed(lambda: encode_tensors(state)),
        "model_decode_mb_s": mb / timed(lambda: decode_tensors(blob)),
        "adapter_values_mb": amb,
        "adapter_encode_mb_s": amb / timed(lambda: encode_adapter(layout, values)),
        "adapter_decode_mb_s": amb / timed(lambda: decode_adapter(payload, layout)),
        "adapter_40pct_zeros_encode_mb_s": amb / timed(lambda: encode_adapter(layout, dead)),
        "adapter_40pct_zeros_decode_mb_s": amb / timed(lambda: decode_adapter(sparse, layout)),
    }


SOCKET_SERVER = """
import socket, sys
data = bytes.fromhex(sys.argv[1]) * int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.sendall(data)
conn.close()
"""


def socket_copy_seconds(size: int) -> float:
    """A plain loopback TCP copy of `size` bytes from another process."""
    unit = hashlib.sha256(b"socket").digest()
    proc = subprocess.Popen(
        [sys.executable, "-c", SOCKET_SERVER, unit.hex(), str(size // 32)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    start = time.perf_counter()
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
    seconds = time.perf_counter() - start
    proc.wait()
    assert received == size // 32 * 32
    return seconds


def download_seconds(
    stub: participant_pb2_grpc.ParticipantServiceStub, md: Any, digest: str, size: int
) -> list[float]:
    """Three timed downloads of an artifact the caller may read."""
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        request = participant_pb2.DownloadBlobRequest(blob_id=digest)
        got = sum(len(c.data) for c in stub.DownloadBlob(request, metadata=md))
        runs.append(time.perf_counter() - start)
        assert got == size
    return runs


def transfer(work: Path, size_mb: int) -> dict[str, float]:
    """Download a size_mb artifact from the coordinator process vs a plain socket copy."""
    payload = hashlib.sha256(b"rpc").digest() * (size_mb * 2**20 // 32)
    digest = hashlib.sha256(payload).hexdigest()
    spec = TrainingSpec(rounds=1, min_participants=1, round_deadline_s=600)
    with LocalFederation(work) as fed:
        fed.start_coordinator()
        held = held_task(fed.address, fed.control(), "bench", spec)
        with held as (raw, job_id, round_number):
            stub, md = raw.stub, raw.md
            stub.UploadBlob(chunks(payload, job_id, round_number, size=1 << 20), metadata=md)
            runs = download_seconds(stub, md, digest, len(payload))
    sockets = [socket_copy_seconds(len(payload)) for _ in range(3)]
    rpc, sock = min(runs), min(sockets)
    return {
        "model_mb": len(payload) / 2**20,
        "rpc_seconds": rpc,
        "socket_seconds": sock,
        "relative_speed": sock / rpc,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-wire"))
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else 2
    cases = CASES[:1] if args.quick else CASES
    results = {
        "models": {c.name: measure_model(c, args.work / c.name, rounds) for c in cases},
        "positions": positions(
            [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5], 200_000 if args.quick else 2_359_296
        ),
        "codec": throughput(1 if args.quick else 3),
        "transfer": transfer(args.work / "transfer", 8 if args.quick else 45),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
