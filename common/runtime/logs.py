"""Logging set-up shared by the daemons: plain text or one JSON object per line.

Records carry context fields (job, phase, round, participant) from a ContextVar: a job's
asyncio task, an RPC handler or an agent's task sets them once with `log_fields(...)` and
every record emitted within (including tasks and threads started from there, which copy
the context) carries them. `extra={...}` fields are attached too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

CONTEXT_FIELDS = ("job", "phase", "round", "participant")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "fused_log_fields", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from `extra=` or the filter.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Defence in depth: an extra whose name says "secret" is never written out.
_SECRET_WORDS = ("token", "authorization", "password", "secret", "credential", "private_key")
REDACTED = "[redacted]"


def set_log_fields(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Merge fields into the current context (None removes one); undo with reset_log_fields."""
    merged = {**_fields.get(), **fields}
    return _fields.set(MappingProxyType({k: v for k, v in merged.items() if v is not None}))


def reset_log_fields(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _fields.reset(token)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Records emitted inside the block carry these fields (on top of the enclosing ones)."""
    token = set_log_fields(**fields)
    try:
        yield
    finally:
        reset_log_fields(token)


def current_log_fields() -> dict[str, Any]:
    return dict(_fields.get())


class ContextFieldsFilter(logging.Filter):
    """Copies the context's fields onto each record, in the emitting thread or task; an
    explicit `extra=` of the same name wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context and extra fields: context fields first, then extras by name."""
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: extras.pop(k) for k in CONTEXT_FIELDS if k in extras}
    ordered.update(sorted(extras.items()))
    return {k: REDACTED if _secret(k) else v for k, v in ordered.items()}


def _secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "") -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._service:
            entry["service"] = self._service
        for key, value in record_fields(record).items():
            entry.setdefault(key, value)  # the fixed keys above are never overwritten
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line plus the fields compactly: `... message [job=job-1 round=3]`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if not fields:
            return line
        suffix = " ".join(f"{k}={_compact(v)}" for k, v in fields.items())
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{suffix}]{newline}{rest}"


def _compact(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="[]\n')) else text


def setup_logging(level: str, json_lines: bool, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFieldsFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter(name))
    else:
        text = f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(TextFormatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
