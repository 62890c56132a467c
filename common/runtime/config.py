"""Daemon configuration from flags, FUSED_* environment variables and an optional TOML file.

Precedence: command-line flag > environment variable > TOML file > dataclass default. Every
field of a config dataclass is a flag (`--field-name`), an environment variable
(`FUSED_FIELD_NAME`) and a TOML key (`field_name`, at top level or in the section named by the
daemon), so the three stay in step by construction.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "FUSED_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _base_type(annotation: Any) -> type:
    """The concrete type of a field, unwrapping `X | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if not isinstance(annotation, type):
        raise TypeError(f"unsupported config field type {annotation!r}")
    return annotation


def _parse_value(name: str, kind: type, raw: Any, source: str) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} from {source}: expected a boolean, got {raw!r}")
    if isinstance(raw, bool) and kind is not bool:
        raise ConfigError(f"{name} from {source}: expected {kind.__name__}, got a boolean")
    if kind is int and isinstance(raw, float):  # int(2.5) would silently truncate
        raise ConfigError(f"{name} from {source}: expected an integer, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} from {source}: expected {kind.__name__}, got {raw!r}") from exc


def _toml_values(path: Path, section: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:  # TOML is UTF-8 whatever the locale
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return {**top, **table}


def build_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help=f"TOML file (env {ENV_PREFIX}CONFIG)")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        help_text = str(field.metadata.get("help", ""))
        env = ENV_PREFIX + field.name.upper()
        default = field.default if field.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (env {env}; default {default})",
            )
        else:
            parser.add_argument(
                flag,
                default=None,
                metavar=field.name.upper(),
                help=f"{help_text} (env {env}; default {default})",
            )
    return parser


def load_config(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    section: str,
    description: str = "",
    environ: Mapping[str, str] | None = None,
) -> T:
    """Parse argv, the environment and the TOML file into an instance of the dataclass cls."""
    environ = os.environ if environ is None else environ
    args = build_parser(cls, prog, description).parse_args(argv)
    config_path = args.config or (
        Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None
    )
    toml = _toml_values(config_path, section) if config_path else {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(toml) - names)
    if unknown:
        raise ConfigError(f"config file {config_path}: unknown keys {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name in names:
        kind = _base_type(hints[name])
        flag_value = getattr(args, name)
        env_value = environ.get(ENV_PREFIX + name.upper()) or None  # empty = unset
        if flag_value is not None:
            values[name] = _parse_value(name, kind, flag_value, "--" + name.replace("_", "-"))
        elif env_value is not None:
            values[name] = _parse_value(name, kind, env_value, ENV_PREFIX + name.upper())
        elif name in toml:
            values[name] = _parse_value(name, kind, toml[name], str(config_path))
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{prog}: {exc}") from exc
