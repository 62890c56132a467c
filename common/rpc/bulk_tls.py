"""TLS for the bulk port over memory buffers: the socket is read and written in large blocks
and OpenSSL works on memory. Python's SSLSocket makes two system calls per 16 KiB record
(2,880 records for a 45 MiB model); this makes one per block."""

from __future__ import annotations

import socket
import ssl
import time

BLOCK = 1 << 20  # ciphertext read, or plaintext encrypted, per system call


class TlsStream:
    """A TLS connection on a connected blocking socket, with the socket calls the bulk port
    uses (sendall, recv_into, settimeout, shutdown, close, getpeername)."""

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, hostname: str = ""
    ) -> None:
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=hostname or None
        )
        self._raw = memoryview(bytearray(BLOCK))

    def handshake(self, deadline: float | None = None) -> None:
        """The TLS handshake, done by `deadline` (time.monotonic()) when one is given."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if deadline is not None:
                    self._sock.settimeout(max(0.001, deadline - time.monotonic()))
                if not self._fill():
                    raise ConnectionError("the peer closed in the TLS handshake") from None
        self._flush()

    def peer_certificate(self) -> bytes | None:
        """The verified peer certificate (DER), if it sent one."""
        return self._tls.getpeercert(binary_form=True)

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), BLOCK):
            self._tls.write(view[start : start + BLOCK])
            self._flush()

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        """Up to nbytes (or len(view)) plaintext bytes; 0 once the peer has closed."""
        n = nbytes or len(view)
        while True:
            try:
                got: int = self._tls.read(n, view)  # type: ignore[assignment]
                return got
            except ssl.SSLWantReadError:
                self._flush()  # what reading produced (TLS 1.3 key updates)
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)

    def getpeername(self) -> tuple[str, int]:
        peer: tuple[str, int] = self._sock.getpeername()
        return peer

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def _fill(self) -> bool:
        n = self._sock.recv_into(self._raw)
        if n:
            self._in.write(self._raw[:n])
        return n > 0

    def _flush(self) -> None:
        if self._out.pending:
            self._sock.sendall(self._out.read())


Stream = socket.socket | TlsStream  # a bulk connection, plain or TLS
