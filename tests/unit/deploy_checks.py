"""Shared helpers of the offline checks of deploy/: paths, YAML, config loading, tools."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from fused.common.runtime.config import load_config
from fused.coordinator.server import CoordinatorConfig
from fused.participant.main import ParticipantConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
SYSTEMD = DEPLOY / "systemd"

# The oldest Kubernetes the manifests target (StatefulSet pods carry the
# apps.kubernetes.io/pod-index label from 1.28) and the newest schema kubernetes_validate has.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "servicemonitor.yaml"}
# Series Prometheus makes itself, not exported by any FUSED process.
PROMETHEUS_SYNTHETIC = {"up"}

DAEMONS: dict[str, tuple[type[Any], str]] = {
    "fused-coordinator": (CoordinatorConfig, "coordinator"),
    "fused-participant": (ParticipantConfig, "participant"),
}


# --- helpers ---------------------------------------------------------------------------------


def read_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_IN_KUSTOMIZATION)


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over every manifest the kustomization applies."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in k8s_manifests()
        for doc in read_yaml_docs(path)
    }


def config_fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def is_optional(cls: type[Any], name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def load_daemon_config(
    cls: type[Any], section: str, toml: Path, environ: Mapping[str, str] | None = None
) -> Any:
    return load_config(
        cls, ["--config", str(toml)], prog=section, section=section, environ=dict(environ or {})
    )


def check_flags(program: str, args: list[str]) -> None:
    """Every --flag given to a daemon is --config or one of its config fields."""
    cls, _ = DAEMONS[program]
    fields = config_fields(cls)
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            assert name == "config" or name in fields, f"{program}: unknown flag {arg}"


def check_env(program: str, env: Mapping[str, str]) -> None:
    cls, _ = DAEMONS[program]
    fields = config_fields(cls)
    for key in env:
        if key.startswith("FUSED_") and key != "FUSED_CONFIG":
            name = key.removeprefix("FUSED_").lower()
            assert name in fields, f"{program}: {key} names no config field"


def run_tool(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def compose() -> dict[str, Any]:
    compose: dict[str, Any] = read_yaml(DEPLOY / "compose.yaml")
    return compose


def compose_config(service: str) -> Any:
    """The config a compose service's daemon would load: its TOML plus its environment."""
    spec = compose()["services"][service]
    program = spec["command"][0]
    cls, section = DAEMONS[program]
    env = spec.get("environment", {})
    check_env(program, env)
    check_flags(program, spec["command"][1:])
    config = spec["command"][spec["command"].index("--config") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
    return load_daemon_config(cls, section, DEPLOY / mounts[config], env)
