"""The example TOML files against the config dataclasses, the Dockerfile's and compose file's
structure, and the systemd units (`systemd-analyze verify`). Tools that are not installed skip
their checks with a reason; nothing here builds or starts anything."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from fused.coordinator.server import CoordinatorConfig
from fused.participant.main import ParticipantConfig
from tests.unit.deploy_checks import (
    DAEMONS,
    DEPLOY,
    SYSTEMD,
    check_flags,
    compose,
    compose_config,
    config_fields,
    is_optional,
    load_daemon_config,
    require_tool,
    run_tool,
)

# --- example configuration -------------------------------------------------------------------

_COMMENTED_KEY = re.compile(r"#([a-z][a-z0-9_]*) = (.+)$")
_ACTIVE_KEY = re.compile(r"([a-z][a-z0-9_]*) = (.+)$")


@pytest.mark.parametrize(
    ("cls", "section"), [(CoordinatorConfig, "coordinator"), (ParticipantConfig, "participant")]
)
def test_example_toml_covers_every_field(cls: type[Any], section: str, tmp_path: Path) -> None:
    example = DEPLOY / f"{section}.example.toml"
    lines = example.read_text(encoding="utf-8").splitlines()
    active = {m.group(1) for line in lines if (m := _ACTIVE_KEY.match(line))}
    commented = {m.group(1) for line in lines if (m := _COMMENTED_KEY.match(line))}
    fields = config_fields(cls)
    assert not active & commented
    missing = sorted(set(fields) - active - commented)
    assert not missing, f"{example.name} lacks fields {missing}"
    assert not sorted((active | commented) - set(fields)), "keys that are no fields"
    # TOML has no null: only fields that default to None may be left commented out.
    for name in commented:
        assert is_optional(cls, name) and fields[name].default is None, name
    # Each key is explained: the lines above it (past other keys) include a comment.
    for i, line in enumerate(lines):
        if _ACTIVE_KEY.match(line) or _COMMENTED_KEY.match(line):
            j = i - 1
            while j >= 0 and (_ACTIVE_KEY.match(lines[j]) or _COMMENTED_KEY.match(lines[j])):
                j -= 1
            assert j >= 0 and lines[j].startswith("# "), f"{example.name}: {line} unexplained"
    # It loads, as it is and with the commented-out keys switched on, and the values arrive.
    for variant, text in (
        ("as-is", "\n".join(lines)),
        ("all-on", "\n".join(_COMMENTED_KEY.sub(r"\1 = \2", line) for line in lines)),
    ):
        path = tmp_path / f"{variant}.toml"
        path.write_text(text + "\n", encoding="utf-8")
        cfg = load_daemon_config(cls, section, path)
        with path.open("rb") as f:
            table = tomllib.load(f)[section]
        hints = typing.get_type_hints(cls)
        for name, value in table.items():
            kind = hints[name]
            if isinstance(kind, types.UnionType):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            assert getattr(cfg, name) == kind(value), f"{variant}: {name}"
        if variant == "all-on":
            assert set(table) == set(fields)


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # line continuations
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_structure() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build and a runtime stage"
    stages = [rest.split()[-1] for rest in froms if " AS " in rest.upper()]
    assert len(stages) == len(froms), "every stage is named"
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    final = instructions[last_from:]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any(k == "COPY" and rest.startswith(f"--from={stages[0]}") for k, rest in final)
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for program in ("fused-coordinator", "fused-participant", "fusedctl"):
        assert program in runs, f"the build smoke-tests {program}"
        assert program in text
    assert not any(k == "ENTRYPOINT" for k, _ in final), "the command picks the program"
    (cmd,) = [json.loads(rest) for k, rest in final if k == "CMD"]
    assert cmd[0] in DAEMONS
    check_flags(cmd[0], cmd[1:])
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "FUSED_" not in env, "image-wide FUSED_* variables would override mounted TOML"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("**") + 1 :], "everything ignored but an allow-list"
    assert not any(line.startswith("!.venv") or line == "!runs/" for line in ignore)


# --- compose ---------------------------------------------------------------------------------


def test_compose_services() -> None:
    services = compose()["services"]
    assert {
        "init",
        "coordinator",
        "participant-0",
        "participant-1",
        "participant-2",
        "prometheus",
        "grafana",
    } <= set(services)
    fused = {name: s for name, s in services.items() if s.get("image", "").startswith("fused")}
    assert len({s["image"] for s in fused.values()}) == 1
    for name, spec in fused.items():
        assert spec["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
        assert spec["user"].split(":")[0] not in {"0", "root"}, name
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
    for name, spec in services.items():
        # Only the init service sees the CA key (it could mint any identity).
        sources = [v.split(":")[0] for v in spec.get("volumes", [])]
        assert ("ca" in sources) == (name == "init"), name
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"


def test_compose_configs_load_and_agree() -> None:
    services = compose()["services"]
    coordinator = compose_config("coordinator")
    assert coordinator.tls_ca is not None and coordinator.auth_file is not None  # mTLS + tokens
    init = services["init"]["command"][-1]
    participants = sorted(name for name in services if name.startswith("participant-"))
    assert f"--participants {len(participants)}" in init
    for name in participants:
        cfg = compose_config(name)
        pid = cfg.participant_id
        assert name == f"participant-{pid.removeprefix('p')}"
        assert cfg.coordinator == f"coordinator:{coordinator.listen.rsplit(':', 1)[1]}"
        assert cfg.data_dir.name == pid and f"--out {cfg.data_dir.parent}" in init
        assert cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.token_file is not None
        assert cfg.tls_cert.name == f"participant-{pid}.pem"
        assert cfg.token_file.name == f"participant-{pid}.token"
        certified = re.search(r"certs init .*--participants ([\w,]+)", init)
        assert certified is not None and pid in certified.group(1).split(",")
    assert "--hosts coordinator," in init, "the server certificate must name `coordinator`"
    assert "mv /var/lib/fused/certs/ca.key /var/lib/fused/ca/" in init


def test_compose_health_check_uses_the_health_port() -> None:
    """The gRPC port requires a client certificate; the health check dials the plaintext
    health port instead, which stays on the container's loopback, unpublished."""
    coordinator = compose_config("coordinator")
    assert coordinator.tls_ca is not None
    host, port = coordinator.health_listen.rsplit(":", 1)
    assert host == "127.0.0.1"
    spec = compose()["services"]["coordinator"]
    script = " ".join(spec["healthcheck"]["test"])
    assert f"127.0.0.1:{port}" in script and "insecure_channel" in script
    assert ".key" not in script, "the health check needs no private key"
    published = [str(p).rsplit(":", 1)[-1] for p in spec.get("ports", [])]
    assert port not in published


def test_docker_compose_config() -> None:
    """Schema check by Compose itself, where a client is installed (no daemon needed)."""
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
    elif shutil.which("docker") and run_tool(["docker", "compose", "version"]).returncode == 0:
        cmd = ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = run_tool(cmd, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr


# --- systemd ---------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists; keys may repeat, continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


UNITS = {
    "fused-coordinator.service": "fused-coordinator",
    "fused-participant@.service": "fused-participant",
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_hardening(name: str) -> None:
    unit = _unit(SYSTEMD / name)
    service = unit["Service"]
    values: dict[str, list[str]] = {}
    for key, value in service:
        values.setdefault(key, []).append(value)

    def one(key: str) -> str:
        assert key in values, f"{name}: {key}= missing"
        return values[key][-1]

    assert one("Restart") == "on-failure"
    assert values.get("DynamicUser") == ["yes"] or one("User") not in {"root", "0"}
    assert one("StateDirectory").startswith("fused/")
    assert one("ConfigurationDirectory") == "fused"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(key) == "yes", f"{name}: {key}"
    assert one("ProtectSystem") == "strict"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values["SystemCallFilter"]
    assert one("CapabilityBoundingSet") == ""
    assert unit["Install"] == [("WantedBy", "multi-user.target")]
    # The command: a real program, its TOML in /etc/fused, and only flags it knows.
    argv = shlex.split(one("ExecStart"))
    assert Path(argv[0]).name == UNITS[name]
    check_flags(UNITS[name], argv[1:])
    assert argv[argv.index("--config") + 1].startswith("/etc/fused/")
    for credential in values.get("LoadCredential", []):
        assert credential.split(":", 1)[1].startswith("/etc/fused/"), credential


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser; the programs are stubbed (they are not installed here)."""
    analyze = require_tool("systemd-analyze")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for program in DAEMONS:
        stub = stubs / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        assert "/opt/fused/bin/" in text
        (tmp_path / name).write_text(text.replace("/opt/fused/bin/", f"{stubs}/"))
    for target in ("fused-coordinator.service", "fused-participant@p0.service"):
        result = run_tool([analyze, "verify", "--man=no", str(tmp_path / target)], cwd=tmp_path)
        output = result.stdout + result.stderr
        # verify exits 0 on many warnings ("Unknown key", "Failed to parse"): none allowed.
        ours = [line for line in output.splitlines() if "fused-" in line]
        assert result.returncode == 0 and not ours, output
        result = run_tool([analyze, "security", "--offline=yes", str(tmp_path / target)])
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        if match is None:
            continue  # an older systemd-analyze without --offline
        assert float(match.group(1)) <= 2.0, result.stdout
