"""docs/WORKLOADS.md stays true: its walk-through's two Python files, taken from the page as
written, make the data and a workload that opens on it, trains and declares a schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fused.common.domain.train_config import TrainConfig
from fused.participant.executor import local_update
from fused.participant.site import offer_of, open_site

DOC = Path(__file__).resolve().parents[2] / "docs" / "WORKLOADS.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_walk_through_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_data, workload = python_blocks()[:2]
    (tmp_path / "make_data.py").write_text(make_data)
    (tmp_path / "tumours.py").write_text(workload)
    subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, check=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    site = open_site("p0", "tumours:Tumours", tmp_path / "parts" / "p0")
    assert (site.workload.name, len(site.data.train), len(site.data.test)) == ("tumours", 152, 38)
    offer = offer_of(site)
    assert offer.num_classes == 2 and sum(offer.class_counts) == 152
    weights = site.workload.build_model(0).state_dict()
    _, stats = local_update(site, weights, TrainConfig(local_epochs=1, lr=0.1, batch_size=32))
    assert stats.num_examples == 152
    code = workload.split('"""', 2)[2].strip()
    assert len(code.splitlines()) <= 30  # "about 30 lines of user code"
