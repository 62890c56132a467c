"""What a peer can put into the logs: escaped, bounded values (no forged lines, no floods),
and refusals rate-limited per kind and peer with a count of what was held back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fused.common.runtime.logs import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    MAX_VALUE_CHARS,
    ContextFieldsFilter,
    JsonFormatter,
    SafeRecordFilter,
    TextFormatter,
    Throttle,
    clip,
    log_fields,
)
from fused.coordinator.refusals import RefusalLog, peer_host

FOUR_MB = "a" * (4 << 20)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("task-1", 64, "task-1"),
        ("t\n2024-01-01 coordinator INFO forged", 64, "t\\n2024-01-01 coordinator INFO forged"),
        ("a\rb\tc\x1b[31m\x00", 64, "a\\rb\\tc\\x1b[31m\\x00"),
        ("line\u2028sep\u202eevil", 64, "line\\u2028sep\\u202eevil"),
        ("x" * 70, 64, "x" * 64 + "...[70 chars]"),
        (FOUR_MB, 16, "a" * 16 + "...[4194304 chars]"),
        ("\n" * 10, 8, "\\n\\n\\n\\n...[10 chars]"),
        ("données ünïcode", 64, "données ünïcode"),  # printable text is kept as it is
    ],
)
def test_clip(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected


@pytest.fixture(params=["text", "json"])
def capture(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with the daemons' filters and either format."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFieldsFilter())
    handler.addFilter(SafeRecordFilter())
    text = TextFormatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(text if request.param == "text" else JsonFormatter("test"))
    logger = logging.getLogger(f"tests.log_safety.{request.param}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.handlers.clear()


Capture = tuple[logging.Logger, io.StringIO]


def readable(out: io.StringIO) -> list[str]:
    """Each output line as a reader sees it: JSON lines decoded to their values."""
    lines = out.getvalue().splitlines()
    if not lines or not lines[0].startswith("{"):
        return lines
    return [" | ".join(map(str, json.loads(line).values())) for line in lines]


def test_a_newline_in_a_value_forges_no_line(capture: Capture) -> None:
    logger, out = capture
    forged = "t-1\nWARNING fused.coordinator.auth: refused everything"
    logger.warning("task %s is not open", forged)
    with log_fields(participant="p\nERROR forged"):
        logger.info("done", extra={"reason": "a\r\nb"})
    assert len(out.getvalue().splitlines()) == 2
    lines = readable(out)
    assert not any("\n" in line or "\r" in line for line in lines)
    assert "t-1\\nWARNING" in lines[0]
    assert "ERROR forged" in lines[1] and "a\\r\\nb" in lines[1]


def test_a_4_mb_value_costs_a_bounded_line(capture: Capture) -> None:
    logger, out = capture
    for _ in range(50):
        logger.warning("PushResult refused: task %s is not open", FOUR_MB)
    logger.info("%s", "b" * (MAX_MESSAGE_CHARS * 4), extra={"note": FOUR_MB})
    assert len(out.getvalue()) < 50 * (MAX_VALUE_CHARS + 200) + 2 * MAX_MESSAGE_CHARS
    assert "...[4194304 chars]" in out.getvalue()


def test_numbers_keep_their_format_and_type(capture: Capture) -> None:
    logger, out = capture
    logger.info("round %d of %s: %.1f s", 3, "job-1", 2.25, extra={"bytes_up": 1234})
    line = out.getvalue().strip()
    assert "round 3 of job-1: 2.2 s" in line
    if line.startswith("{"):
        assert json.loads(line)["bytes_up"] == 1234


def test_a_bad_format_call_is_left_to_logging(capture: Capture) -> None:
    logger, _ = capture
    logging.raiseExceptions = False  # logging prints bad calls to stderr; here it must not raise
    try:
        logger.info("%d", "not a number")
    finally:
        logging.raiseExceptions = True


def test_a_traceback_keeps_its_lines_but_is_bounded(capture: Capture) -> None:
    logger, out = capture
    try:
        raise ValueError("x\rforged" + "y" * MAX_TRACEBACK_CHARS)
    except ValueError:
        logger.exception("failed")
    text = "\n".join(readable(out))
    assert "\r" not in text and "x\\rforged" in text
    assert len(text) < MAX_TRACEBACK_CHARS + 2048


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# (seconds since the last step, key) -> what admit answers: None = suppressed, else the count
# of records of that key suppressed before it
THROTTLE_STEPS: list[tuple[float, str, int | None]] = [
    (0, "a", 0),
    (0, "a", 0),
    (0, "a", 0),  # the burst of 3
    (0, "a", None),
    (0, "a", None),
    (0, "b", 0),  # another key has its own bucket
    (0.5, "a", None),  # half a token back: not yet
    (0.5, "a", 3),  # one token back: passes, telling of the 3 held back
    (0, "a", None),
    (0, "c", 0),
    (0, "d", None),  # all keys together: the burst of 6 is spent, so d waits too
    (10, "d", 1),
]


def test_throttle_steps() -> None:
    clock = Clock()
    throttle = Throttle(per_s=1.0, burst=3, total_per_s=0.1, total_burst=6, clock=clock)
    answers = []
    for seconds, key, _ in THROTTLE_STEPS:
        clock.now += seconds
        answers.append(throttle.admit(key))
    assert answers == [expected for _, _, expected in THROTTLE_STEPS]


def test_throttle_holds_a_bounded_number_of_keys() -> None:
    throttle = Throttle(per_s=0.0, burst=1, total_per_s=1e9, total_burst=10**9, max_keys=4)
    for i in range(1000):
        assert throttle.admit(f"peer-{i}") == 0
    assert len(throttle._buckets) == 4  # the least recently used went
    assert throttle.admit("peer-999") is None  # a kept bucket stays spent


def test_refusal_log_suppresses_a_flood_and_says_how_much(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    refusals = RefusalLog(Throttle(per_s=0.1, burst=2, total_per_s=10, total_burst=50, clock=clock))
    caplog.set_level(logging.WARNING, logger="fused.coordinator.refusals")
    written = [
        refusals.refused(
            logging.WARNING, "PushResult", "INVALID_ARGUMENT", f"ipv4:10.0.0.1:{p}", "x"
        )
        for p in range(1000, 1050)  # new connections of one client share its bucket
    ]
    assert written.count(True) == 2
    clock.now += 10
    assert refusals.refused(
        logging.WARNING, "PushResult", "INVALID_ARGUMENT", "ipv4:10.0.0.1:1", "x"
    )
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == (
        "refused PushResult from ipv4:10.0.0.1: INVALID_ARGUMENT: x "
        "(48 similar refusals not logged)"
    )
    assert len(messages) == 3


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5555", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:5555", "ipv6:[::1]"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host
