"""Moving a model between processes: the agent's own transfers against a plain socket copy.

    python -m bench.transfer_speed [--size-mb 45] [--repeat 3] [--tls] [--grpc-only]

A coordinator process serves a `size_mb` artifact; this process downloads it and uploads
fresh ones of the same size through participant.transfer.TaskTransfer, on the channel the
agent builds (common.rpc.channels.create_channel) and the coordinator's bulk port as the
agent finds it (--grpc-only: none, so DownloadBlob/UploadBlob streams): digest checks and
the coordinator's spool, verification, fsync and store included, as in a round. --tls: mutual
TLS on both ports, with a throwaway PKI. Against it, a plain loopback TCP copy of the same
number of bytes with another process, each way. Best of `repeat` each; prints JSON. The goal
(issue 17): each direction at >= 0.5x the plain socket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from bench.raw_participant import held_task
from fused.cli.pki import init_pki
from fused.common.domain.specs import TrainingSpec
from fused.common.rpc.channels import CHUNK_BYTES, TlsFiles, create_channel
from fused.common.rpc.task_convert import task_from_proto
from fused.participant.blobs import BlobCache
from fused.participant.bulk import BulkLink
from fused.participant.transfer import TaskTransfer
from fused.proto.v1 import participant_pb2, participant_pb2_grpc
from fused.tools.launch import LocalFederation

SOCKET_PEER = """
import socket, sys
mode, size = sys.argv[1], int(sys.argv[2])
data = bytes(range(256)) * (size // 256)
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
if mode == "send":
    conn.sendall(data)
else:
    got = 0
    while got < len(data):
        got += len(conn.recv(1 << 20))
    conn.sendall(b"k")
conn.close()
"""


def socket_copy(size: int, direction: str) -> float:
    """Seconds to move `size` bytes over loopback TCP with another process: "download"
    (the peer sends) or "upload" (this process sends, the peer acknowledges the last byte)."""
    mode = "send" if direction == "download" else "recv"
    proc = subprocess.Popen(
        [sys.executable, "-c", SOCKET_PEER, mode, str(size)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    data = bytes(range(256)) * (size // 256)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        if mode == "send":
            received = 0
            while chunk := conn.recv(1 << 20):
                received += len(chunk)
            assert received == len(data)
        else:
            conn.sendall(data)
            assert conn.recv(1) == b"k"
    seconds = time.perf_counter() - start
    proc.wait()
    return seconds


DIRECTIONS = ("download", "upload")


def socket_copy_run(size: int, direction: str, _: int) -> float:
    return socket_copy(size, direction)


def best(repeat: int, run: Callable[[int], float]) -> float:
    return min(run(i) for i in range(repeat))


def pki(work: Path, tls: bool) -> tuple[TlsFiles | None, TlsFiles | None, list[str]]:
    """With tls: the bench participant's and the operator's TLS files and the coordinator's
    flags for mutual TLS; else nothing."""
    if not tls:
        return None, None, []
    init_pki(work / "pki", ["bench"])

    def files(who: str) -> TlsFiles:
        return TlsFiles(
            work / "pki" / f"{who}.pem", work / "pki" / f"{who}.key", work / "pki/ca.pem"
        )

    tls_flags = [
        f"--tls-{k}={work / 'pki' / f}"
        for k, f in (("cert", "coordinator.pem"), ("key", "coordinator.key"), ("ca", "ca.pem"))
    ]
    return files("participant-bench"), files("operator-admin"), tls_flags


def rpc_transfers(
    work: Path, size: int, repeat: int, tls: bool = False, bulk: bool = True
) -> dict[str, float]:
    """Best download and upload seconds through the agent's TaskTransfer."""
    spec = TrainingSpec(rounds=1, min_participants=1, round_deadline_s=600)
    mine, operator, tls_flags = pki(work, tls)
    bulk_flags = ["--bulk-listen", "127.0.0.1:0"] if bulk else []
    with LocalFederation(work, tls=operator) as fed:
        fed.start_coordinator("--max-upload-mb", str(2 * size >> 20), *tls_flags, *bulk_flags)
        with held_task(fed.address, fed.control(), "bench", spec, mine) as (raw, job_id, rnd):
            terms = raw.register()  # again: this reply names the bulk port
            link = BulkLink("127.0.0.1", terms.bulk_port, mine) if terms.bulk_port else None
            channel = create_channel(fed.address, mine, None)
            stub = participant_pb2_grpc.ParticipantServiceStub(channel)
            task = task_from_proto(
                participant_pb2.Task(
                    task_id="t",
                    job_id=job_id,
                    round=rnd,
                    phase="train",
                    kind=participant_pb2.TASK_KIND_TRAIN,
                )
            )

            def transfer() -> TaskTransfer:
                return TaskTransfer(
                    stub, task, raw.md, BlobCache(0), 4 * size, CHUNK_BYTES, 0, bulk=link
                )

            first = payload(size, 0)
            digest = transfer().upload(first)

            def download(_: int) -> float:
                start = time.perf_counter()
                got = transfer().fetch(digest)  # cache of 0 bytes: always downloads
                assert len(got) == size
                return time.perf_counter() - start

            def upload(i: int) -> float:
                blob = payload(size, i + 1)  # fresh content: a stored digest is not resent
                start = time.perf_counter()
                transfer().upload(blob)
                return time.perf_counter() - start

            result = {"download_s": best(repeat, download), "upload_s": best(repeat, upload)}
            channel.close()
    return result


def payload(size: int, salt: int) -> bytes:
    unit = hashlib.sha256(f"transfer-{salt}".encode()).digest()
    return unit * (size // len(unit))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="mutual TLS on both ports")
    parser.add_argument("--grpc-only", action="store_true", help="no bulk port: gRPC streams")
    args = parser.parse_args(argv)
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        rpc = rpc_transfers(Path(tmp), size, args.repeat, args.tls, not args.grpc_only)
    sock = {d: best(args.repeat, partial(socket_copy_run, size, d)) for d in DIRECTIONS}
    out = {
        "size_mb": args.size_mb,
        "path": "grpc" if args.grpc_only else "bulk",
        "tls": args.tls,
        **rpc,
        "socket_download_s": sock["download"],
        "socket_upload_s": sock["upload"],
        "download_speed_vs_socket": sock["download"] / rpc["download_s"],
        "upload_speed_vs_socket": sock["upload"] / rpc["upload_s"],
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
