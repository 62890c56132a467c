"""pyproject.toml declares ranges, so the package installs next to a user's own torch (a CUDA
build, a newer release) and Python; constraints.txt pins the tested versions, and the
Dockerfile installs exactly those, the CPU build of torch first."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _requirements() -> dict[str, Requirement]:
    deps = _project()["dependencies"]
    assert isinstance(deps, list)
    return {(r := Requirement(str(d))).name: r for d in deps}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt pins exactly: {line}"
            pins[req.name] = Version(spec.version)
    return pins


def _lower_bound(spec: SpecifierSet) -> Version:
    (low,) = [Version(s.version) for s in spec if s.operator == ">="]
    return low


def test_python_is_a_range_from_the_tested_version() -> None:
    spec = SpecifierSet(str(_project()["requires-python"]))
    assert all(s.operator == ">=" for s in spec), f"no upper bound or pin: {spec}"
    assert _lower_bound(spec) == Version("3.11")
    assert spec.contains(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert spec.contains("3.12") and spec.contains("3.13")


def test_torch_is_a_range_and_the_pin_lies_in_it() -> None:
    spec = _requirements()["torch"].specifier
    assert all(s.operator == ">=" for s in spec), f"torch must not be pinned: {spec}"
    pinned = _pins()["torch"]
    assert spec.contains(pinned)
    assert _lower_bound(spec) == Version(f"{pinned.major}.{pinned.minor}")
    # CUDA and other local builds (2.13.0+cu128, a newer release) satisfy the range too
    assert spec.contains(f"{pinned}+cu128") and spec.contains("2.14.0")
    assert spec.contains(Version(torch.__version__).public)


def test_no_dependency_is_pinned_in_pyproject() -> None:
    pinned = [
        str(r) for r in _requirements().values() if any(s.operator == "==" for s in r.specifier)
    ]
    assert not pinned, f"pins belong in constraints.txt: {pinned}"


def test_dockerfile_installs_the_pinned_cpu_torch_and_uses_the_constraints() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8"))
    runs = [line.strip() for line in text.splitlines() if line.strip().startswith("RUN ")]
    pinned = _pins()["torch"]
    cpu = f"pip install torch=={pinned} --index-url https://download.pytorch.org/whl/cpu"
    assert any(cpu in run for run in runs), "torch: the pinned CPU wheel, before the package"
    installs = [run for run in runs if re.search(r"pip install .*\s\.(\s|$)", run)]
    assert installs and all("-c constraints.txt" in run for run in installs)
    assert "COPY pyproject.toml constraints.txt" in text
