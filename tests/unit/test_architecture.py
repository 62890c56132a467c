"""The package rules of docs/ARCHITECTURE.md, checked on the source: one import root, who may
import whom, no import cycles, and an installed distribution holding nothing but `fused`."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("common", "coordinator", "participant", "proto", "client", "cli", "tools")  # fused/<x>
REPO_PACKAGES = ("bench", "experiments", "tests")  # run from the repository, never installed

# package -> packages it must never import (prefixes of fused.* module names)
_REPO_ONLY = ("bench", "experiments", "tests")  # installed code must not need them
FORBIDDEN = {
    "fused": _REPO_ONLY,
    "fused.common": (
        "fused.coordinator",
        "fused.participant",
        "fused.client",
        "fused.cli",
        "fused.tools",
    ),
    "fused.proto": (
        "fused.common",
        "fused.coordinator",
        "fused.participant",
        "fused.client",
        "fused.cli",
        "fused.tools",
    ),
    # common's subpackages are layered: domain < ml < codecs < rpc, runtime beside
    "fused.common.domain": (
        "fused.common.ml",
        "fused.common.codecs",
        "fused.common.rpc",
        "fused.common.runtime",
    ),
    "fused.common.ml": ("fused.common.codecs", "fused.common.rpc", "fused.common.runtime"),
    "fused.common.codecs": ("fused.common.rpc", "fused.common.runtime"),
    "fused.participant": ("fused.coordinator", "fused.client", "fused.cli", "fused.tools"),
    # the coordinator never runs workload code: it works from tensor schemas and given weights
    "fused.coordinator": (
        "fused.participant",
        "fused.client",
        "fused.cli",
        "fused.tools",
        "fused.common.ml.workloads",
        "fused.common.ml.models",
        "fused.common.ml.data",
    ),
    # the client library is what other systems embed: it talks to the coordinator over gRPC
    "fused.client": ("fused.coordinator", "fused.participant", "fused.cli", "fused.tools"),
    "fused.cli": ("fused.coordinator", "fused.participant", "fused.tools"),
    # the job engine is the bottom of the coordinator's job stack: methods and job kinds
    # build on it, and the manager gets the kinds injected by the server
    "fused.coordinator.engine": ("fused.coordinator.methods", "fused.coordinator.jobs"),
    "fused.coordinator.methods": ("fused.coordinator.jobs", "fused.coordinator.server"),
    "fused.coordinator.state": ("fused.coordinator.engine", "fused.coordinator.jobs"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in LINKED:
        parts.insert(0, "fused")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[Path]:
    for top in (*LINKED, *REPO_PACKAGES, "fused"):
        folder = ROOT / top
        if folder.is_symlink():
            continue
        for path in sorted(folder.rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every imported module name, at any depth of the file (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from fused.x import y` may import module fused.x.y
                yield node.lineno, f"{node.module}.{alias.name}"


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def first_party_modules() -> set[str]:
    return {module_name(p) for p in sources() if within(module_name(p), "fused")}


def test_every_import_goes_through_the_one_root() -> None:
    bare = [
        f"{path.relative_to(ROOT)}:{line}: import {name}"
        for path in sources()
        for line, name in imports(path)
        if name.split(".")[0] in LINKED
    ]
    assert not bare, "import these through fused.*:\n" + "\n".join(bare)


def test_packages_import_only_what_they_may() -> None:
    broken = []
    for path in sources():
        here = module_name(path)
        for package, banned in FORBIDDEN.items():
            if not within(here, package):
                continue
            for line, name in imports(path):
                hit = [b for b in banned if within(name, b)]
                if hit:
                    broken.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {name}")
    assert not broken, "\n".join(broken)


def import_graph() -> dict[str, set[str]]:
    known = first_party_modules()
    graph: dict[str, set[str]] = {}
    for path in sources():
        here = module_name(path)
        if here in known:
            graph[here] = {name for _, name in imports(path) if name in known and name != here}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_root_links_every_top_level_package() -> None:
    for name in LINKED:
        link = ROOT / "fused" / name
        assert link.is_symlink(), f"fused/{name} must link ../{name}"
        assert link.resolve() == (ROOT / name).resolve()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    for name in ("fused", *LINKED):
        assert f"COPY {name} ./{name}" in dockerfile, f"the image build must copy {name}/"


@pytest.mark.timeout(120)
def test_the_distribution_installs_only_fused(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps"),
            *("--no-build-isolation", "--quiet", "--disable-pip-version-check"),
            *("--wheel-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"fused"}, f"top-level names in the wheel: {sorted(tops)}"
    for name in ("coordinator/main.py", "participant/main.py", "cli/main.py", "proto/v1"):
        assert any(n.startswith(f"fused/{name}") for n in names), f"fused/{name} missing"
