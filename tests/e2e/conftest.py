"""End-to-end checks against real third-party servers; `make e2e` (FUSED_E2E=1) runs them.

The default `make test` collects them too but skips them, so they do not run twice in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FUSED_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="end-to-end check with a real Prometheus: run `make e2e`")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)
