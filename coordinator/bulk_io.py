"""The bulk port's blocking I/O, run on its worker threads (bulk_server.py holds the event
loop side). Socket calls, file writes and sha256 all release the GIL, so a transfer runs
beside the loop; nothing here touches the coordinator's state."""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fused.common.rpc.bulk_tls import Stream, TlsStream
from fused.common.rpc.bulk_wire import (
    HEADER,
    HELLO_BYTES,
    IO_BYTES,
    MAGIC,
    MAX_REASON_BYTES,
    OK,
    REFUSED,
    frame,
)
from fused.common.rpc.identity import Identity, identity_from_cert
from fused.coordinator.spool import SpoolWriter
from fused.coordinator.upload_limits import UploadLimits, next_chunk_deadline, stalled


@dataclass
class Progress:
    """Bytes one connection moved so far, each way (read by the loop once a step ends)."""

    received: int = 0
    sent: int = 0


@dataclass(frozen=True)
class Hello:
    sock: Stream  # TLS when the port has TLS
    ticket: bytes
    peer: Identity | None  # the verified client certificate's identity (mTLS)


def hello(
    conn: socket.socket, ctx: ssl.SSLContext | None, timeout_s: float, progress: Progress
) -> Hello:
    """The TLS handshake (with a context) and the opening HELLO, both within timeout_s."""
    conn.settimeout(timeout_s)
    deadline = time.monotonic() + timeout_s
    sock: Stream = conn
    peer = None
    if ctx is not None:
        sock = TlsStream(conn, ctx, server_side=True)
        sock.handshake(deadline)
        der = sock.peer_certificate()
        peer = identity_from_cert(ssl.DER_cert_to_PEM_cert(der).encode()) if der else None
    data = bytearray()
    while len(data) < HELLO_BYTES:  # by the deadline however slowly it comes
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        view = memoryview(bytearray(HELLO_BYTES - len(data)))
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the peer closed the connection before its hello")
        data += view[:n]
    progress.received += HELLO_BYTES
    if not data.startswith(MAGIC):
        raise ValueError("not a bulk transfer (bad hello)")
    return Hello(sock, bytes(data[len(MAGIC) :]), peer)


def send(sock: Stream, data: bytes, progress: Progress) -> None:
    sock.sendall(data)
    progress.sent += len(data)


def send_file(sock: Stream, path: Path, offset: int, total: int, progress: Progress) -> None:
    """An OK frame with the file's bytes from `offset`: sendfile(2) on a plain socket; read
    and sent in large blocks through TLS."""
    count = total - offset
    with path.open("rb") as f:
        send(sock, HEADER.pack(OK, count), progress)
        if isinstance(sock, socket.socket):
            progress.sent += sock.sendfile(f, offset, count)
            return
        f.seek(offset)
        buf = memoryview(bytearray(IO_BYTES))
        while n := f.readinto(buf[: min(IO_BYTES, total - offset)]):
            sock.sendall(buf[:n])
            progress.sent += n
            offset += n


def receive(sock: Stream, writer: SpoolWriter, limits: UploadLimits, progress: Progress) -> None:
    """The rest of an upload into the spool writer. The writer (file write and sha256) works
    on one buffer while the socket fills the other; each buffer must arrive within the
    upload limits' deadline (idle timeout, minimum rate), else LimitExceeded."""
    start, end = writer.size, writer.total
    buffers = [memoryview(bytearray(min(IO_BYTES, end - start))) for _ in range(2)]
    pace = _Pace(limits, time.monotonic(), start)
    pending: Future[None] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="bulk-spool") as spool:
        for i, offset in enumerate(range(start, end, IO_BYTES)):
            view = buffers[i % 2][: min(IO_BYTES, end - offset)]
            got, cut = _fill(sock, view, pace, offset, progress)
            if pending is not None:
                pending.result()  # the other buffer is free again
            pending = spool.submit(writer.write, offset, view[:got])
            if cut is not None:  # what arrived is kept for a resume
                pending.result()
                raise cut
        if pending is not None:
            pending.result()


@dataclass(frozen=True)
class _Pace:
    limits: UploadLimits
    started: float
    start: int  # the offset this connection began at


def _fill(
    sock: Stream, view: memoryview, pace: _Pace, offset: int, progress: Progress
) -> tuple[int, Exception | None]:
    """Fill `view` (the upload's bytes at `offset`), each read within the pace's deadline:
    how many bytes arrived, and why no more did when that is fewer."""
    got = 0
    while got < len(view):
        now = time.monotonic()
        moved = offset + got - pace.start
        deadline = next_chunk_deadline(pace.limits, pace.started, now, moved)
        sock.settimeout(max(0.001, deadline.at - now))
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:
            elapsed = time.monotonic() - pace.started
            return got, stalled(pace.limits, deadline, elapsed, moved, offset + got)
        except OSError as exc:
            return got, exc
        if n == 0:
            return got, ConnectionError(f"the upload stopped at offset {offset + got}")
        got += n
        progress.received += n
    return got, None


def refusal(message: str) -> bytes:
    return frame(REFUSED, message.encode()[:MAX_REASON_BYTES])
