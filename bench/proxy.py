"""A transparent TCP proxy on loopback that records every read: full wire bytes (gRPC and
HTTP/2 framing included) between participants and a server, for like-for-like comparisons."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
UP, DOWN = "up", "down"  # participant -> server, server -> participant


@dataclass(frozen=True)
class WireEvent:
    """One read from a socket by the proxy: when, which way, how many bytes."""

    time: float
    direction: str  # UP or DOWN
    nbytes: int


def bytes_in_window(events: Sequence[WireEvent], start: float, end: float) -> dict[str, int]:
    """Bytes each way (and in total) of the events with start <= time <= end."""
    if end < start:
        raise ValueError(f"window ends ({end}) before it starts ({start})")
    totals = {UP: 0, DOWN: 0}
    for event in events:
        if start <= event.time <= end:
            totals[event.direction] += event.nbytes
    return {**totals, "total": totals[UP] + totals[DOWN]}


def write_events(path: Path, events: Sequence[WireEvent]) -> None:
    """Every proxy read as CSV (unix time, direction, bytes), for a closer look afterwards."""
    lines = ["time,direction,bytes", *(f"{e.time:.6f},{e.direction},{e.nbytes}" for e in events)]
    path.write_text("\n".join(lines) + "\n")


class CountingProxy:
    """Forwards every connection made to LOOPBACK:port to LOOPBACK:upstream_port and records
    each read (time, direction, bytes). Runs an asyncio loop in a thread of its own."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self._events: list[WireEvent] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def events(self) -> list[WireEvent]:
        with self._lock:
            return list(self._events)

    def _record(self, direction: str, nbytes: int) -> None:
        with self._lock:
            self._events.append(WireEvent(time.time(), direction, nbytes))

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while data := await src.read(1 << 16):
                self._record(direction, len(data))
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            except OSError:
                writer.close()
                return
            self.connections += 1
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, UP), self._pump(up_reader, writer, DOWN)
                )
            finally:
                for w in (writer, up_writer):
                    w.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await w.wait_closed()
        finally:
            self._tasks.discard(task)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- processes ---------------------------------------------------------------------------------
