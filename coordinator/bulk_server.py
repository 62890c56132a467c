"""The bulk port: large artifacts move over a plain TCP connection (TLS with the gRPC port's
certificates, client certificates required when it requires them) instead of gRPC streams,
which in Python cost several times what the bytes do. Participants still only connect out.

A transfer is opened by OpenTransfer, an authenticated gRPC call that makes DownloadBlob's
or UploadBlob's checks and returns a single-use ticket (bulk_tickets.py); the connection
presents it (framing: common/rpc/bulk_wire.py). What follows is what those calls do: a
download is verified before it is sent, an upload goes through the same spool, limits,
digest check and fsync, and its bytes count under DownloadBlob and UploadBlob with the
OpenTransfer call's labels. Blocking I/O runs on this port's own threads (bulk_io.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fused.common.rpc.bulk_tls import Stream
from fused.common.rpc.bulk_wire import OK, frame, server_context
from fused.common.rpc.channels import TlsFiles
from fused.common.rpc.identity import PARTICIPANT, Identity
from fused.common.rpc.metering import SENT, CallLabels, WireMetrics
from fused.coordinator import bulk_io
from fused.coordinator.bulk_io import Hello, Progress
from fused.coordinator.bulk_tickets import Ticket, TicketBook
from fused.coordinator.refusals import REFUSALS
from fused.coordinator.rpc_errors import SERVER_FAULTS, Wording, status_of
from fused.coordinator.spool import SpoolWriter
from fused.coordinator.transfer import Downloads, Uploads

log = logging.getLogger(__name__)
T = TypeVar("T")
UNREDEEMED = "BulkTransfer"  # the method label of bytes of a connection without a good ticket
UPLOAD_WORDS = Wording("upload rejected: ", "invalid_upload", "store the upload")


class BulkRefusal(ValueError):
    """A connection refused before its transfer began (its ticket, its certificate)."""


@dataclass(frozen=True)
class BulkLimits:
    max_connections: int = 64  # transfers at once (each holds a thread); more are closed
    handshake_timeout_s: float = 5.0  # for the TLS handshake and the hello, together


@dataclass(frozen=True)
class BulkDeps:
    """What the port serves from, and where it counts."""

    tickets: TicketBook
    downloads: Downloads
    uploads: Uploads
    wire: WireMetrics
    on_rejected: Callable[[str], None]  # fused_rejected_results, by reason


class BulkServer:
    """bind() first (Register names the port), then start() with what it serves."""

    def __init__(self, tls: TlsFiles | None, limits: BulkLimits) -> None:
        self._ctx = server_context(tls) if tls is not None else None
        self._mtls = tls is not None and tls.ca is not None
        self._limits = limits
        self._pool = ThreadPoolExecutor(limits.max_connections, thread_name_prefix="bulk")
        self._conns: set[Stream] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._deps: BulkDeps  # set by start()
        self._accepting: asyncio.Task[None] | None = None

    def bind(self, address: str) -> int:
        """Listen on "host:port" (port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        listener = socket.create_server((host.strip("[]"), int(port)), backlog=128)
        listener.setblocking(False)
        self._listener = listener
        if self._ctx is None:
            log.warning("bulk port %s without TLS: use only on a trusted network", address)
        bound: int = listener.getsockname()[1]
        return bound

    def start(self, deps: BulkDeps) -> None:
        assert self._listener is not None, "bind() first"
        self._deps = deps
        self._accepting = asyncio.create_task(self._accept(self._listener))

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns):  # wakes the threads blocked on them
            _shut(conn)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: the next may succeed
                log.warning("bulk port: accept failed (%s)", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._conns) >= self._limits.max_connections:
                conn.close()  # a thread each: a flood must not queue behind real transfers
                continue
            conn.setblocking(True)
            self._conns.add(conn)
            task = asyncio.create_task(self._serve(conn))
            self._serving.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._serving.discard)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _serve(self, conn: socket.socket) -> None:
        progress = Progress()
        method, labels = UNREDEEMED, CallLabels()
        sock: Stream = conn
        try:
            timeout = self._limits.handshake_timeout_s
            hello = await self._io(bulk_io.hello, conn, self._ctx, timeout, progress)
            sock = hello.sock  # TLS, when the port has it
            self._conns.add(sock)
            ticket = self._redeem(hello)
            method, labels = ticket.method, ticket.labels
            await self._transfer(sock, ticket, progress)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:  # the peer's doing
            log.debug("bulk connection ended: %s", exc)
        except Exception as exc:
            await self._refuse(sock, method, exc, progress)
        finally:
            _shut(sock)
            self._conns.difference_update((conn, sock))
            self._count(method, labels, progress)

    def _redeem(self, hello: Hello) -> Ticket:
        ticket = self._deps.tickets.redeem(hello.ticket)
        if ticket is None:
            raise BulkRefusal("unknown, used or expired ticket: ask OpenTransfer for another")
        if self._mtls and hello.peer != Identity(PARTICIPANT, ticket.participant):
            raise BulkRefusal("the client certificate is not that of the ticket's participant")
        return ticket

    async def _transfer(self, sock: Stream, ticket: Ticket, progress: Progress) -> None:
        sock.settimeout(self._deps.uploads.limits.idle_timeout_s)  # a peer that stops reading
        if ticket.download is not None:
            request = ticket.download
            total = await self._deps.downloads.checked_size(request.blob_id, request.offset)
            path = self._deps.downloads.artifacts.path_for(request.blob_id)
            await self._io(bulk_io.send_file, sock, path, request.offset, total, progress)
            return
        assert ticket.upload is not None

        async def pump(writer: SpoolWriter) -> None:
            await self._io(bulk_io.send, sock, frame(OK), progress)  # go ahead
            limits = self._deps.uploads.limits
            await self._io(bulk_io.receive, sock, writer, limits, progress)

        uploads = self._deps.uploads
        stored = await uploads.receive_bulk(ticket.participant, ticket.upload, pump)
        await self._io(bulk_io.send, sock, frame(OK, stored.blob_id.encode()), progress)

    async def _refuse(self, sock: Stream, method: str, exc: Exception, progress: Progress) -> None:
        """Answer what a transfer raised as the gRPC calls would (rpc_errors' table); an
        exception no rule covers is a bug: logged, and answered INTERNAL."""
        words = UPLOAD_WORDS if method == "UploadBlob" else Wording()
        status = (
            (grpc.StatusCode.PERMISSION_DENIED, str(exc))
            if isinstance(exc, BulkRefusal)
            else status_of(exc, words)
        )
        if status is None:
            log.exception("bulk transfer failed", exc_info=exc)
            status = (grpc.StatusCode.INTERNAL, "internal error; see the coordinator's log")
        code, message = status
        level = logging.ERROR if code in SERVER_FAULTS else logging.WARNING
        REFUSALS.refused(level, f"bulk {method}", code.name, _peer(sock), message)
        if words.count and code == grpc.StatusCode.INVALID_ARGUMENT:
            self._deps.on_rejected(words.count)
        with contextlib.suppress(OSError):  # it may have hung up first
            await self._io(bulk_io.send, sock, bulk_io.refusal(f"{code.name}: {message}"), progress)

    def _count(self, method: str, labels: CallLabels, progress: Progress) -> None:
        """The connection's bytes on the wire metrics and the job's accounting, as the gRPC
        call's would be (one message each way)."""
        for direction, n in (("received", progress.received), (SENT, progress.sent)):
            if n:
                self._deps.wire.record(method, direction, labels.phase, labels.participant, n)
                if labels.charge is not None:
                    labels.charge(direction, n)


def _peer(sock: Stream) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"ipv4:{host}:{port}"


def _shut(sock: Stream) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
