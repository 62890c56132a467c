"""Flower's own virtual environment (never the project's) and the processes run from it:
spawning, waiting for a port, stopping."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.proxy import LOOPBACK

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"  # the project's pin, so both sides train with the same kernels


def log(message: str) -> None:
    print(f"[flower-compare] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout_s} s")


def child_env(repo_importable: bool = True) -> dict[str, str]:
    """Environment of a Flower-side process: no venv leaking in; this repository importable
    (read-only) where asked; pip gets it without, lest it take the repo for an installed one."""
    drop = {"VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if repo_importable:
        env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO_ROOT
        )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def installed_flwr(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import flwr, torch, safetensors, numpy; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        env=child_env(repo_importable=False),
        cwd=python.parent,  # not the repository: its egg-info would look like an install
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_flower_venv(venv: Path, flwr_version: str) -> Path:
    """The interpreter of a virtual environment holding flwr==flwr_version (made if needed)."""
    check_venv_path(venv)
    python = venv / "bin" / "python"
    if installed_flwr(python) == flwr_version:
        return python
    log(f"installing flwr=={flwr_version} into {venv}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = [f"flwr=={flwr_version}", f"torch=={TORCH_VERSION}", "safetensors", "numpy"]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *packages],
        check=True,
        stdout=sys.stderr,
        env=child_env(repo_importable=False),
        cwd=python.parent,
    )
    found = installed_flwr(python)
    if found != flwr_version:
        raise RuntimeError(f"{venv} has flwr {found!r} after installing, not {flwr_version}")
    return python


def check_venv_path(venv: Path) -> None:
    """Refuse the project's own environment (or the running one): Flower never goes there."""
    target = venv.resolve()
    forbidden = {(REPO_ROOT / ".venv").resolve(), Path(sys.prefix).resolve()}
    if target in forbidden:
        raise SystemExit(f"refusing to install Flower into {target}: pick another --venv")
