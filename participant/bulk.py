"""The agent's side of the coordinator's bulk port (framing: common/rpc/bulk_wire.py): one
connection out per artifact, authorized by an OpenTransfer ticket."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fused.common.rpc.bulk_tls import Stream, TlsStream
from fused.common.rpc.bulk_wire import (
    HEADER,
    HELLO_BYTES,
    IO_BYTES,
    MAGIC,
    MAX_REASON_BYTES,
    client_context,
    read_header,
    recv_exactly,
)
from fused.common.rpc.channels import TlsFiles

Count = Callable[[str, str, int], None]  # (method, direction, bytes) on the wire metrics
TIMEOUT_S = 60.0  # the longest wait for the coordinator on a bulk connection


def _uncounted(method: str, direction: str, n: int) -> None:
    pass


@dataclass(frozen=True)
class BulkLink:
    """Where the bulk port is (the host the agent dials, the port Register named), the TLS
    of the agent's channel, and where its bytes are counted (as DownloadBlob/UploadBlob)."""

    host: str
    port: int
    tls: TlsFiles | None = None
    count: Count = _uncounted

    @classmethod
    def beside(cls, target: str, port: int, tls: TlsFiles | None, count: Count) -> BulkLink:
        """The bulk port `port` on the host of the gRPC target "host:port"."""
        host = target.rpartition(":")[0].removeprefix("dns:///").strip("[]")
        return cls(host, port, tls, count)

    def download(self, ticket: bytes, digest: str, max_bytes: int) -> bytes:
        """The artifact's bytes, checked against `digest` (hashed while the rest arrives)."""
        with self._connect(ticket, "DownloadBlob") as (sock, tally):
            _, size = read_header(sock)
            tally.received += HEADER.size
            if size > max_bytes:
                raise ValueError(f"download of {size} bytes exceeds {max_bytes} bytes")
            data, got = _receive_hashed(sock, size)
            tally.received += size
        if got != digest:
            raise ValueError(f"downloaded artifact does not match its digest {digest}")
        return data

    def upload(self, ticket: bytes, blob: bytes, offset: int) -> str:
        """Send blob[offset:] once the coordinator admits it; the digest it stored."""
        with self._connect(ticket, "UploadBlob") as (sock, tally):
            stored = _reply(sock, tally)
            if stored:  # uploaded before: nothing to send
                return stored
            sock.sendall(memoryview(blob)[offset:])
            tally.sent += len(blob) - offset
            return _reply(sock, tally)

    @contextlib.contextmanager
    def _connect(self, ticket: bytes, method: str) -> Iterator[tuple[Stream, _Tally]]:
        """A connection that has presented `ticket`; its bytes are counted as one message
        each way of `method` when it closes (as the coordinator counts them)."""
        tally = _Tally()
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
        sock: Stream = raw
        try:
            if self.tls is not None:
                sock = TlsStream(raw, client_context(self.tls), False, self.host)
                sock.handshake()
            sock.sendall(MAGIC + ticket)
            tally.sent += HELLO_BYTES
            yield sock, tally
        finally:
            sock.close()
            for direction, n in (("sent", tally.sent), ("received", tally.received)):
                if n:
                    self.count(method, direction, n)


@dataclass
class _Tally:
    sent: int = 0
    received: int = 0


def _reply(sock: Stream, tally: _Tally) -> str:
    """A short OK frame's text (a digest, or nothing)."""
    _, length = read_header(sock)
    if length > MAX_REASON_BYTES:
        raise ConnectionError(f"a bulk reply of {length} bytes")
    text = recv_exactly(sock, length).decode()
    tally.received += HEADER.size + length
    return text


def _receive_hashed(sock: Stream, size: int) -> tuple[bytes, str]:
    """`size` bytes and their sha256, hashed on a second thread while the rest arrives."""
    # Received in place into the buffer getvalue() hands over without a copy; bytes(size)
    # comes zeroed from calloc, so its pages are first touched by the receive itself (fresh
    # pages cost here about what the transfer does).
    buf = io.BytesIO(bytes(size))
    view = buf.getbuffer()
    hasher = hashlib.sha256()
    hashed: list[Future[None]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="bulk-hash") as pool:
        got = start = 0
        while got < size:
            n = sock.recv_into(view[got:], min(size - got, IO_BYTES))
            if n == 0:
                raise ConnectionError(f"bulk download cut after {got} of {size} bytes")
            got += n
            if got - start >= IO_BYTES or got == size:
                hashed.append(pool.submit(hasher.update, view[start:got]))
                start = got
        for done in hashed:
            done.result()
    del hashed
    view.release()
    return buf.getvalue(), hasher.hexdigest()
