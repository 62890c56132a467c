"""`fused-coordinator`: run the coordinator daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import resource
import signal
import sys
from collections.abc import Sequence

import torch

from fused.common.rpc.metering import disable_created_series
from fused.common.runtime.config import ConfigError, load_config
from fused.common.runtime.logs import setup_logging
from fused.coordinator.server import Coordinator, CoordinatorConfig


async def serve(config: CoordinatorConfig) -> None:
    coordinator = Coordinator(config)
    await coordinator.start()
    # torch's import leaves ~190k long-lived objects that every full collection would scan
    # again (0.3 s each, on the event loop): move them out of the collector's sight
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await coordinator.stop()


def raise_open_files_limit() -> None:
    """Each participant holds a connection, and uploads and artifact reads add files: 1,000
    participants need more than the common soft limit of 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(
            CoordinatorConfig,
            argv,
            prog="fused-coordinator",
            section="coordinator",
            description="FUSED federation coordinator daemon",
        )
        if config.threads < 0:
            raise ConfigError(f"threads must be 0 (torch's default) or more, got {config.threads}")
    except ConfigError as exc:
        print(f"fused-coordinator: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(config.log_level, config.log_json, "coordinator", writer_thread=True)
        raise_open_files_limit()
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        disable_created_series()
        asyncio.run(serve(config))
    except (ValueError, OSError) as exc:  # bad TLS or auth files, a port in use, ...
        print(f"fused-coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
