"""The coordinator process of bench.load: start it, read its resource use, stop it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.load_participant import (
    REPO_ROOT,
)

# --------------------------------------------------------------------------- the coordinator


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the coordinator subprocess)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the load process dies, so no coordinator is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the coordinator's shutdown


def start_coordinator(
    work: Path, extra: Sequence[str], timeout_s: float = 120.0
) -> tuple[subprocess.Popen[bytes], int, Path]:
    ready = work / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = work / "coordinator.log"
    command = [
        sys.executable,
        "-m",
        "fused.coordinator.main",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(work / "state"),
        "--metrics-port=-1",
        "--ready-file",
        str(ready),
        *extra,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"coordinator exited with {proc.returncode}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"coordinator not ready after {timeout_s:g} s:\n{tail(log_path)}")
        time.sleep(0.05)
    port = int(json.loads(ready.read_text())["port"])
    return proc, port, log_path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_usage(pid: int) -> dict[str, float]:
    """Peak RSS (VmHWM) in MiB and user+system CPU seconds of a live process."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return {
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "cpu_seconds": round(ticks / os.sysconf("SC_CLK_TCK"), 2),
    }


def established_to(port: int) -> int:
    """Established TCP connections whose remote end is port (the client ends, on loopback)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def stop_coordinator(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9
