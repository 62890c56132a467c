"""The bulk port's framing, shared by the coordinator and the agents.

A connection (TLS when the gRPC port has it) moves one artifact. The agent opens with HELLO:
MAGIC and the 32-byte ticket OpenTransfer gave it. The coordinator answers with frames of a
9-byte header, status (OK or REFUSED) and length, followed by that many bytes:

- download: OK with the artifact's bytes (from the ticket's offset on);
- upload: OK, empty (go ahead), then the agent sends the rest of the artifact raw, and the
  coordinator answers OK with the stored digest once it is durably stored; an OK naming the
  digest at once means the agent had uploaded it already;
- anything refused: REFUSED with the reason (UTF-8), then the connection closes.
"""

from __future__ import annotations

import ssl
import struct

from fused.common.rpc.bulk_tls import Stream
from fused.common.rpc.channels import TlsFiles

MAGIC = b"FUSEDBK1"
TICKET_BYTES = 32
HELLO_BYTES = len(MAGIC) + TICKET_BYTES
HEADER = struct.Struct("!BQ")
OK, REFUSED = 0, 1
MAX_REASON_BYTES = 4096  # a refusal's text, and any OK that is not an artifact's bytes
# Loopback moves a few MiB per system call at most; a bigger buffer only costs memory.
IO_BYTES = 4 << 20


class BulkRefused(ValueError):
    """The coordinator refused a bulk transfer; the message says why."""


def frame(status: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(status, len(payload)) + payload


def recv_exactly(sock: Stream, n: int) -> bytes:
    """n bytes, or ConnectionError when the peer closes first."""
    buf = bytearray(n)
    recv_into_all(sock, memoryview(buf))
    return bytes(buf)


def recv_into_all(sock: Stream, view: memoryview) -> None:
    """Fill `view` from the socket; ConnectionError when the peer closes first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], min(len(view) - got, IO_BYTES))
        if n == 0:
            raise ConnectionError(
                f"the peer closed the connection after {got} of {len(view)} bytes"
            )
        got += n


def read_header(sock: Stream) -> tuple[int, int]:
    """(status, length) of the next frame; a REFUSED frame raises BulkRefused."""
    status, length = HEADER.unpack(recv_exactly(sock, HEADER.size))
    if status == OK:
        return status, length
    if status != REFUSED or length > MAX_REASON_BYTES:
        raise ConnectionError(f"not a bulk frame (status {status}, length {length})")
    raise BulkRefused(recv_exactly(sock, length).decode(errors="replace"))


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS for the bulk port, as the gRPC port has it: its certificate, and client
    certificates required and checked when a CA is given (mTLS)."""
    assert tls.cert is not None and tls.key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.ca)
    return ctx


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS to the bulk port, checking the coordinator's certificate against the CA (and its
    host name) as the gRPC channel does, with the client certificate when there is one."""
    ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx
