"""Logging set-up shared by the daemons: plain text or one JSON object per line.

Records carry context fields (job, phase, round, participant) from a ContextVar: a job's
asyncio task, an RPC handler or an agent's task sets them once with `log_fields(...)` and
every record emitted within (including tasks and threads started from there, which copy
the context) carries them. `extra={...}` fields are attached too.

What a record interpolates may come from a peer (ids, reasons, exception texts): the
SafeRecordFilter escapes control characters and cuts each value and the whole message, so
one record stays one bounded line; `Throttle` bounds how often a peer can cause a record.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import logging.handlers
import queue
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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

MAX_VALUE_CHARS = 1024  # one interpolated string or field value (a job's reason fits)
MAX_MESSAGE_CHARS = 4096  # a whole message
MAX_TRACEBACK_CHARS = 16384
# Control characters (C0, DEL, C1), line and paragraph separators and bidirectional overrides:
# each could end a line or make one read as something else.
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
_UNSAFE += [*range(0x2066, 0x206A)]
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text` fit for one log line or status message: control characters escaped, and at
    most `limit` characters of it, followed by its full length when it was longer. Reads no
    more of `text` than it keeps, so a 4 MB value costs what a short one does."""
    head = text[:limit].translate(_ESCAPES)[:limit]
    return head if len(text) <= limit else f"{head}...[{len(text)} chars]"


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
    return {k: REDACTED if _secret(k) else _bounded(v) for k, v in ordered.items()}


def _bounded(value: Any) -> Any:
    """Numbers and flags as they are (JSON keeps their type); anything else clipped text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(str(value))


def _bounded_traceback(text: str) -> str:
    """A traceback keeps its lines, but no other control character, and a bounded length."""
    lines = text[:MAX_TRACEBACK_CHARS].split("\n")
    cut = "" if len(text) <= MAX_TRACEBACK_CHARS else f"...[{len(text)} chars]"
    return "\n".join(line.translate(_ESCAPES) for line in lines) + cut


class SafeRecordFilter(logging.Filter):
    """Interpolates the record's message once, safely: string arguments clipped (see `clip`),
    then the whole message, so a peer's value can neither forge a line nor flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(clip(a) if isinstance(a, str) else a for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a bad format call: logging reports it when it formats the record
            return True
        record.msg, record.args = clip(message, MAX_MESSAGE_CHARS), ()
        return True


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class Throttle:
    """Token buckets by key, for records a peer can cause at will (refused calls): a key may
    pass `burst` records at once and `per_s` a second after that. What it suppresses is
    counted and told with its next record that passes. Buckets are bounded (the least
    recently used go), and one more bucket caps all keys together (`total_per_s`,
    `total_burst`), so a flood from ever new keys is bounded too."""

    def __init__(
        self,
        per_s: float,
        burst: int,
        total_per_s: float,
        total_burst: int,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate, self._burst = per_s, float(burst)
        self._total_rate, self._total_burst = total_per_s, float(total_burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._total = _Bucket(self._total_burst, clock())

    def admit(self, key: Hashable) -> int | None:
        """None: drop this record. Otherwise the number of records of this key suppressed
        since the last one that passed (0 most of the time)."""
        now = self._clock()
        bucket = self._bucket(key, now)
        _refill(bucket, now, self._rate, self._burst)
        _refill(self._total, now, self._total_rate, self._total_burst)
        if bucket.tokens < 1 or self._total.tokens < 1:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1
        self._total.tokens -= 1
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return suppressed

    def _bucket(self, key: Hashable, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        return bucket


def _refill(bucket: _Bucket, now: float, rate: float, cap: float) -> None:
    bucket.tokens = min(cap, bucket.tokens + (now - bucket.stamp) * rate)
    bucket.stamp = now


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

    def formatException(self, ei: Any) -> str:
        return _bounded_traceback(super().formatException(ei))


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

    def formatException(self, ei: Any) -> str:
        return _bounded_traceback(super().formatException(ei))


def _compact(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="[]\n')) else text


class _PreparedQueueHandler(logging.handlers.QueueHandler):
    """Queues records as its filters left them: context fields copied and the message
    interpolated on the emitting thread; formatting and the write happen on the writer's."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_writer: logging.handlers.QueueListener | None = None


def stop_log_writer() -> None:
    """Write out what is queued and end the writer thread (at exit, on a new set-up)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def setup_logging(level: str, json_lines: bool, name: str, writer_thread: bool = False) -> None:
    """Root logging to stderr. With `writer_thread`, records are formatted and written by a
    thread of their own: on the coordinator's event loop the formatting and the write (a
    system call that gives up the GIL and waits to get it back) took ~15% of a result."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(name))
    else:
        text = f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(TextFormatter(text))
    stop_log_writer()
    front: logging.Handler = handler
    if writer_thread:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        front = _PreparedQueueHandler(records)
        global _writer
        _writer = logging.handlers.QueueListener(records, handler)
        _writer.start()
        atexit.unregister(stop_log_writer)
        atexit.register(stop_log_writer)
    front.addFilter(ContextFieldsFilter())  # in the emitting thread or task: its context
    front.addFilter(SafeRecordFilter())
    root = logging.getLogger()
    root.handlers[:] = [front]
    root.setLevel(level.upper())
