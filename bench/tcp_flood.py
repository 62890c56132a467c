"""`python -m bench.tcp_flood`: hold many idle TCP connections to a port, measure what it does.

The connections send nothing. Each one the server closes is opened again a second later, so
the pressure stays on for as long as the flood runs. With --pid, the server process's open
descriptors are sampled too. Loopback only: the source address is any 127.x.y.z.
Output (JSON): how many connections were opened and how many the server closed, the most held
at once, the longest a connection stayed open (our side: the server's accept backlog counts),
and the server's peak descriptor count.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType

REOPEN_AFTER_S = 1.0
OWN_RESERVE = 400  # descriptors this process keeps for everything else


@dataclass
class FloodStats:
    opened: int = 0  # connections established
    failed: int = 0  # connects that failed (refused, or out of descriptors or ports)
    closed: int = 0  # closed by the server
    held_peak: int = 0  # most connections open at once (our side: accepted or in its backlog)
    longest_s: float = 0.0  # the longest a connection stayed open before the server closed it
    server_fds_peak: int = 0  # the server's open descriptors at most (with --pid)


def flood_size(wanted: int) -> int:
    """`wanted`, or as many as this process's open-files limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(wanted, soft - OWN_RESERVE - len(os.listdir("/proc/self/fd"))))


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Flood:
    """`count` idle connections from `source` to `target`, held on a thread of their own."""

    def __init__(
        self, target: tuple[str, int], count: int, source: str = "127.0.0.1", pid: int = 0
    ) -> None:
        self.target, self.count, self.source, self.pid = target, count, source, pid
        self.stats = FloodStats()
        self._stop = threading.Event()
        self._opened_all = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def wait_opened(self, timeout_s: float = 120.0) -> bool:
        """Whether the first `count` connects have all been tried."""
        return self._opened_all.wait(timeout_s)

    def wait_server_fds(self, at_least: int, timeout_s: float = 60.0) -> bool:
        """Whether the server came to hold `at_least` descriptors (needs `pid`)."""
        deadline = time.monotonic() + timeout_s
        while self.stats.server_fds_peak < at_least and not self._opened_all.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.stats.server_fds_peak >= at_least

    def _connect(self, sel: selectors.BaseSelector) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((self.source, 0))
            code = sock.connect_ex(self.target)
        except OSError:
            code = errno.EADDRNOTAVAIL
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats.failed += 1
            return False
        sel.register(sock, selectors.EVENT_READ, time.monotonic())
        self.stats.opened += 1
        self.stats.held_peak = max(self.stats.held_peak, len(sel.get_map()))
        return True

    def _closed(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> bool:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        try:
            if sock.recv(4096):
                return False  # the server spoke (HTTP/2 settings): still open
        except BlockingIOError:
            return False
        except OSError:
            pass
        lived = time.monotonic() - key.data
        sel.unregister(sock)
        sock.close()
        self.stats.closed += 1
        self.stats.longest_s = max(self.stats.longest_s, lived)
        return True

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        reopen: list[float] = []
        try:
            for i in range(self.count):
                if self._stop.is_set():
                    break
                if not self._connect(sel):
                    heapq.heappush(reopen, time.monotonic() + REOPEN_AFTER_S)
                if i % 256 == 0:
                    self._sample()
            self._opened_all.set()
            while not self._stop.is_set():
                self._step(sel, reopen)
        finally:
            self._opened_all.set()
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()

    def _step(self, sel: selectors.BaseSelector, reopen: list[float]) -> None:
        for key, _ in sel.select(timeout=0.1):
            if self._closed(sel, key):
                heapq.heappush(reopen, time.monotonic() + REOPEN_AFTER_S)
        now = time.monotonic()
        while reopen and reopen[0] <= now:
            heapq.heappop(reopen)
            if not self._connect(sel):
                heapq.heappush(reopen, now + REOPEN_AFTER_S)
                break
        self._sample()

    def _sample(self) -> None:
        if self.pid:
            self.stats.server_fds_peak = max(self.stats.server_fds_peak, open_fds(self.pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tcp_flood", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port (loopback)")
    parser.add_argument("--count", type=int, default=20_000, help="capped by the files limit")
    parser.add_argument("--source", default="127.0.0.2", help="a loopback address to send from")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pid", type=int, default=0, help="the server process, for its fds")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host.startswith("127.") or not args.source.startswith("127."):
        parser.error("loopback addresses only")
    count = flood_size(args.count)
    with Flood((host, int(port)), count, args.source, args.pid) as flood:
        flood.wait_opened()
        time.sleep(args.seconds)
    print(json.dumps({"count": count, **asdict(flood.stats)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
