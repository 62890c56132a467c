"""load_config: defaults, TOML, FUSED_* environment, flags, precedence and errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fused.common.runtime.config import ConfigError, load_config
from fused.coordinator.server import CoordinatorConfig
from fused.participant.main import ParticipantConfig


@dataclass(frozen=True)
class DemoConfig:
    name: str = "demo"
    count: int = 3
    ratio: float = 0.5
    verbose: bool = False
    out: Path | None = None


def _load(argv: Sequence[str] = (), environ: dict[str, str] | None = None) -> DemoConfig:
    return load_config(DemoConfig, list(argv), prog="demo", section="demo", environ=environ or {})


def _toml(tmp_path: Path, text: str, name: str = "fused.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- a small dataclass of our own -----------------------------------------------------------


def test_defaults() -> None:
    assert _load() == DemoConfig()


def test_flags_parse_every_type(tmp_path: Path) -> None:
    cfg = _load(
        ["--name", "x", "--count", "-7", "--ratio", "2.25", "--verbose", "--out", str(tmp_path)]
    )
    assert cfg == DemoConfig(name="x", count=-7, ratio=2.25, verbose=True, out=tmp_path)
    assert isinstance(cfg.out, Path)


def test_env_parses_every_type() -> None:
    env = {
        "FUSED_NAME": "from-env",
        "FUSED_COUNT": "11",
        "FUSED_RATIO": "1e-3",
        "FUSED_VERBOSE": "true",
        "FUSED_OUT": "/tmp/ready.json",
    }
    cfg = _load(environ=env)
    assert cfg == DemoConfig("from-env", 11, 1e-3, True, Path("/tmp/ready.json"))


def test_unrelated_env_is_ignored() -> None:
    env = {"COUNT": "9", "fused_count": "9", "FUSED_UNKNOWN": "1", "PATH": "/bin"}
    assert _load(environ=env) == DemoConfig()


def test_toml_top_level_and_section(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'name = "top"\ncount = 5\nratio = 0.75\n\n'
        '[demo]\ncount = 8\nverbose = true\nout = "r.json"\n\n'
        '[other]\nname = "ignored"\nnot_a_field = 1\n',
    )
    cfg = _load(["--config", str(path)])
    # count: the section overrides the top level; other sections are not ours to read
    assert cfg == DemoConfig(name="top", count=8, ratio=0.75, verbose=True, out=Path("r.json"))


def test_toml_int_for_float_field(tmp_path: Path) -> None:
    path = _toml(tmp_path, "ratio = 2\n")
    cfg = _load(["--config", str(path)])
    assert cfg.ratio == 2.0 and isinstance(cfg.ratio, float)


def test_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[demo]\nname = "toml"\ncount = 1\nratio = 0.1\n')
    env = {"FUSED_NAME": "env", "FUSED_COUNT": "2"}
    cfg = _load(["--config", str(path), "--name", "flag"], env)
    assert (cfg.name, cfg.count, cfg.ratio) == ("flag", 2, 0.1)


def test_config_from_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, "count = 42\n")
    assert _load(environ={"FUSED_CONFIG": str(path)}).count == 42


def test_config_flag_beats_fused_config_env(tmp_path: Path) -> None:
    env_file = _toml(tmp_path, "count = 1\n", "env.toml")
    flag_file = _toml(tmp_path, "count = 2\n", "flag.toml")
    cfg = _load(["--config", str(flag_file)], {"FUSED_CONFIG": str(env_file)})
    assert cfg.count == 2


def test_empty_fused_config_means_none() -> None:
    assert _load(environ={"FUSED_CONFIG": ""}) == DemoConfig()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--verbose"], {}, True),
        (["--no-verbose"], {"FUSED_VERBOSE": "true"}, False),
        (["--verbose"], {"FUSED_VERBOSE": "0"}, True),
        ([], {"FUSED_VERBOSE": "true"}, True),
        ([], {"FUSED_VERBOSE": "TRUE"}, True),
        ([], {"FUSED_VERBOSE": " yes "}, True),
        ([], {"FUSED_VERBOSE": "on"}, True),
        ([], {"FUSED_VERBOSE": "1"}, True),
        ([], {"FUSED_VERBOSE": "0"}, False),
        ([], {"FUSED_VERBOSE": "false"}, False),
        ([], {"FUSED_VERBOSE": "off"}, False),
        ([], {"FUSED_VERBOSE": "no"}, False),
    ],
)
def test_bool_parsing(argv: list[str], env: dict[str, str], expected: bool) -> None:
    assert _load(argv, env).verbose is expected


def test_bool_env_overrides_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, "verbose = true\n")
    assert _load(["--config", str(path)], {"FUSED_VERBOSE": "0"}).verbose is False


@pytest.mark.parametrize(
    ("argv", "env", "toml", "fragments"),
    [
        (["--count", "abc"], {}, None, ["count", "--count", "expected int", "'abc'"]),
        ([], {"FUSED_COUNT": "abc"}, None, ["count", "FUSED_COUNT", "expected int"]),
        ([], {"FUSED_RATIO": "half"}, None, ["ratio", "FUSED_RATIO", "expected float"]),
        ([], {"FUSED_VERBOSE": "maybe"}, None, ["verbose", "FUSED_VERBOSE", "expected a boolean"]),
        ([], {}, 'count = "abc"\n', ["count", "fused.toml", "expected int"]),
        ([], {}, "count = true\n", ["count", "fused.toml", "got a boolean"]),
        ([], {}, "verbose = 2\n", ["verbose", "fused.toml", "expected a boolean"]),
        ([], {}, "out = 5\n", ["out", "fused.toml", "expected Path"]),
        ([], {}, "[demo]\nverbose = [1]\n", ["verbose", "fused.toml", "expected a boolean"]),
    ],
)
def test_bad_values_name_key_and_source(
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    toml: str | None,
    fragments: list[str],
) -> None:
    if toml is not None:
        argv = [*argv, "--config", str(_toml(tmp_path, toml))]
    with pytest.raises(ConfigError) as info:
        _load(argv, env)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_toml_keys_are_named(tmp_path: Path) -> None:
    path = _toml(tmp_path, "colour = 1\n[demo]\nzeta = 2\ncount = 3\n")
    with pytest.raises(ConfigError) as info:
        _load(["--config", str(path)])
    message = str(info.value)
    assert str(path) in message
    assert "unknown keys colour, zeta" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        _load(environ={"FUSED_CONFIG": str(path)})
    assert str(path) in str(info.value)
    assert "No such file or directory" in str(info.value)


def test_directory_as_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        _load(["--config", str(tmp_path)])
    assert str(tmp_path) in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, "count = = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        _load(["--config", str(path)])
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, "demo = 3\n")
    with pytest.raises(ConfigError, match=r"\[demo\] must be a table"):
        _load(["--config", str(path)])


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match=r"binary\.toml"):
        _load(["--config", str(path)])


def test_toml_float_for_int_field_is_rejected(tmp_path: Path) -> None:
    path = _toml(tmp_path, "count = 2.5\n")
    with pytest.raises(ConfigError, match="count"):
        _load(["--config", str(path)])


def test_unknown_flag_exits() -> None:
    with pytest.raises(SystemExit) as info:
        _load(["--no-such-flag", "1"])
    assert info.value.code == 2


# --- the daemons' real config classes --------------------------------------------------------


def _coordinator(argv: Sequence[str] = (), env: dict[str, str] | None = None) -> CoordinatorConfig:
    return load_config(
        CoordinatorConfig,
        list(argv),
        prog="fused-coordinator",
        section="coordinator",
        environ=env or {},
    )


def _participant(argv: Sequence[str] = (), env: dict[str, str] | None = None) -> ParticipantConfig:
    return load_config(
        ParticipantConfig,
        list(argv),
        prog="fused-participant",
        section="participant",
        environ=env or {},
    )


def test_real_configs_defaults() -> None:
    assert _coordinator() == CoordinatorConfig()
    assert _participant() == ParticipantConfig()


def test_every_field_is_reachable_as_flag_env_and_toml(tmp_path: Path) -> None:
    """The three sources stay in step with the dataclass by construction: check it for real."""
    loaders: list[tuple[type[Any], Callable[..., Any], str]] = [
        (CoordinatorConfig, _coordinator, "coordinator"),
        (ParticipantConfig, _participant, "participant"),
    ]
    for cls, load, section in loaders:
        for field in dataclasses.fields(cls):
            default: Any = getattr(cls(), field.name)
            raw, value = _distinct_value(field.name, default)
            assert value != default, field.name
            flag = "--" + field.name.replace("_", "-")
            env = "FUSED_" + field.name.upper()
            toml = _toml(tmp_path, f"[{section}]\n{field.name} = {_toml_literal(raw)}\n")
            from_flag = [flag] if raw == "true" else [flag, raw]
            assert getattr(load(from_flag), field.name) == value, flag
            assert getattr(load(env={env: raw}), field.name) == value, env
            assert getattr(load(["--config", str(toml)]), field.name) == value, field.name


def _distinct_value(name: str, default: Any) -> tuple[str, Any]:
    """A raw string unlike the default, and the value it parses to."""
    if isinstance(default, bool):
        return "true", True
    if isinstance(default, int):
        return str(default + 17), default + 17
    if isinstance(default, float):
        return str(default + 0.5), default + 0.5
    if default is None or isinstance(default, Path):
        return f"/srv/{name}", Path(f"/srv/{name}")
    return f"{name}-value", f"{name}-value"


def _toml_literal(raw: str) -> str:
    if raw == "true":
        return raw
    try:
        float(raw)
    except ValueError:
        return f'"{raw}"'
    return raw


def test_coordinator_toml_env_flag_precedence(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'listen = "0.0.0.0:1"\nmax_upload_mb = 1\nlog_level = "debug"\n'
        "\n[coordinator]\n"
        'listen = "0.0.0.0:2"\nmetrics_port = -1\nstate_dir = "/var/lib/fused"\n'
        "log_json = true\n"
        "\n[participant]\n"
        'coordinator = "elsewhere:1"\nthreads = 4\n',
    )
    env = {"FUSED_CONFIG": str(path), "FUSED_METRICS_PORT": "0", "FUSED_LOG_JSON": "0"}
    cfg = _coordinator(["--listen", "127.0.0.1:3"], env)
    assert cfg.listen == "127.0.0.1:3"  # flag > section > top level
    assert cfg.metrics_port == 0  # env > section
    assert cfg.log_json is False  # env "0" > TOML true
    assert cfg.state_dir == Path("/var/lib/fused")
    assert cfg.max_upload_mb == 1  # top level only
    assert cfg.log_level == "debug"
    assert cfg.tls_cert is None and cfg.ready_file is None
    assert cfg.store_location() == "/var/lib/fused/state.db"
    assert _coordinator(["--log-json"]).log_json is True
    assert _coordinator(["--no-log-json"], {"FUSED_LOG_JSON": "true"}).log_json is False


def test_participant_shares_the_file_with_the_coordinator(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'log_level = "warning"\n'
        '\n[coordinator]\nlisten = "0.0.0.0:2"\nmax_upload_mb = 9\n'
        '\n[participant]\ncoordinator = "coord.example:443"\nthreads = 4\ntls_ca = "/ca.pem"\n',
    )
    cfg = _participant(["--threads", "2"], {"FUSED_CONFIG": str(path), "FUSED_LOG_JSON": "true"})
    assert cfg.coordinator == "coord.example:443"
    assert cfg.threads == 2
    assert cfg.tls_ca == Path("/ca.pem")
    assert cfg.log_level == "warning"
    assert cfg.log_json is True
    assert cfg.data_dir == Path("shard") and cfg.metrics_port == -1


def test_coordinator_rejects_participant_only_keys_at_top_level(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'device = "cpu"\n')
    with pytest.raises(ConfigError, match="unknown keys device"):
        _coordinator(["--config", str(path)])


def test_coordinator_refuses_negative_threads(capsys: pytest.CaptureFixture[str]) -> None:
    from fused.coordinator.main import main

    assert main(["--threads", "-1", "--metrics-port", "-1"]) == 2
    assert "threads must be 0 (torch's default) or more, got -1" in capsys.readouterr().err


def test_coordinator_bad_int_names_field_and_source() -> None:
    with pytest.raises(ConfigError) as info:
        _coordinator(env={"FUSED_MAX_UPLOAD_MB": "abc"})
    assert str(info.value) == "max_upload_mb from FUSED_MAX_UPLOAD_MB: expected int, got 'abc'"
