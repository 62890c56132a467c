"""Structured logs: context fields (job, phase, round, participant) across threads and
asyncio tasks, extras, the JSON and text formats, and that secrets stay out."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fused.common.runtime.logs import (
    REDACTED,
    ContextFieldsFilter,
    JsonFormatter,
    TextFormatter,
    current_log_fields,
    log_fields,
    set_log_fields,
    setup_logging,
    stop_log_writer,
)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    """A logger whose records go through the real filter into a string, JSON by default."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFieldsFilter())
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("tests.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out, handler
    logger.handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


Capture = tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]


def test_json_lines_carry_context_fields_and_extras(capture: Capture) -> None:
    logger, out, _ = capture
    logger.info("outside")
    with log_fields(job="job-1", phase="train"):
        with log_fields(round=3, participant="p0"):
            logger.info("round %d done", 3, extra={"bytes_up": 1234})
        logger.warning("after the round")
    first, inner, after = lines(out)
    assert set(first) == {"time", "level", "logger", "message", "service"}
    assert inner["message"] == "round 3 done"
    assert (inner["job"], inner["phase"], inner["round"], inner["participant"]) == (
        "job-1",
        "train",
        3,
        "p0",
    )
    assert inner["bytes_up"] == 1234 and inner["service"] == "test"
    assert after["job"] == "job-1" and "round" not in after and "participant" not in after
    assert current_log_fields() == {}


def test_none_removes_a_field_and_explicit_extra_wins(capture: Capture) -> None:
    logger, out, _ = capture
    with log_fields(job="job-1", round=2), log_fields(round=None):
        logger.info("no round here")
        logger.info("explicit", extra={"job": "job-9"})
    plain, explicit = lines(out)
    assert plain["job"] == "job-1" and "round" not in plain
    assert explicit["job"] == "job-9"


def test_secret_looking_extras_are_redacted(capture: Capture) -> None:
    logger, out, _ = capture
    logger.info("call", extra={"authorization": "Bearer abc", "token_file": "/x", "peer": "ok"})
    (entry,) = lines(out)
    assert entry["authorization"] == REDACTED and entry["token_file"] == REDACTED
    assert entry["peer"] == "ok" and "abc" not in json.dumps(entry)


def test_threads_keep_their_own_fields(capture: Capture) -> None:
    logger, out, _ = capture
    both_set = threading.Barrier(2)

    def agent(pid: str, job: str) -> None:
        with log_fields(participant=pid, job=job, round=1):
            both_set.wait()  # both contexts are live at once
            logger.info("task done by %s", pid)

    threads = [threading.Thread(target=agent, args=(f"p{i}", f"job-{i}")) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_pid = {e["participant"]: e for e in lines(out)}
    assert by_pid["p0"]["job"] == "job-0" and by_pid["p1"]["job"] == "job-1"
    assert all(e["message"] == f"task done by {pid}" for pid, e in by_pid.items())


def test_asyncio_tasks_copy_and_isolate_context(capture: Capture) -> None:
    logger, out, _ = capture

    async def job(job_id: str, rounds: int) -> None:
        set_log_fields(job=job_id)  # like JobManager._run: this task's own context
        for r in range(1, rounds + 1):
            set_log_fields(phase="train", round=r)  # like JobContext.progress
            await asyncio.sleep(0)  # interleave with the other job
            logger.info("round %d", r)
        await asyncio.to_thread(logger.info, "from a worker thread")  # copies the context

    async def main() -> None:
        with log_fields(participant="p7"):  # a handler's caller, inherited by tasks it starts
            await asyncio.gather(job("job-a", 2), job("job-b", 3))
        logger.info("back in main")

    asyncio.run(main())
    entries = lines(out)
    rounds = {(e["job"], e["round"]) for e in entries if e["message"].startswith("round")}
    assert rounds == {("job-a", 1), ("job-a", 2), ("job-b", 1), ("job-b", 2), ("job-b", 3)}
    for e in entries:
        if e["message"].startswith("round"):
            assert e["message"] == f"round {e['round']}" and e["participant"] == "p7"
    workers = [e for e in entries if e["message"] == "from a worker thread"]
    assert {(e["job"], e["round"]) for e in workers} == {("job-a", 2), ("job-b", 3)}
    assert "job" not in entries[-1] and "participant" not in entries[-1]


def test_text_format_appends_fields_compactly(capture: Capture) -> None:
    logger, out, handler = capture
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    with log_fields(job="job-1", round=3, participant="p0"):
        logger.info("aggregated", extra={"note": "two words"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    text = out.getvalue().splitlines()
    assert (
        text[0] == 'INFO tests.logs: aggregated [job=job-1 round=3 participant=p0 note="two words"]'
    )
    assert text[1] == "ERROR tests.logs: failed [job=job-1 round=3 participant=p0]"
    assert text[2] == "Traceback (most recent call last):" and text[-1] == "ValueError: boom"


def test_text_format_without_fields_is_the_plain_line(capture: Capture) -> None:
    logger, out, handler = capture
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    logger.info("plain")
    assert out.getvalue() == "INFO plain\n"


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_restored")
def test_setup_logging_json_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", json_lines=True, name="coordinator")
    log = logging.getLogger("tests.setup")
    with log_fields(job="job-2", round=5):
        log.info("hidden by the level")
        log.warning("shown")
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["message"] == "shown" and entry["level"] == "warning"
    assert (entry["service"], entry["job"], entry["round"]) == ("coordinator", "job-2", 5)


@pytest.mark.usefixtures("root_restored")
def test_setup_logging_text(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", json_lines=False, name="participant")
    with log_fields(participant="p3", job="job-4", phase="adapter", round=2):
        logging.getLogger("tests.setup").debug("task started")
    err = capsys.readouterr().err
    assert " participant DEBUG tests.setup: task started " in err
    assert err.rstrip().endswith("[job=job-4 phase=adapter round=2 participant=p3]")


@pytest.mark.usefixtures("root_restored")
def test_setup_logging_writer_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """Records go out from the writer thread with the emitting context's fields and the
    message as it read when logged."""
    setup_logging("info", json_lines=True, name="coordinator", writer_thread=True)
    try:
        values = ["before"]
        with log_fields(job="job-7", participant="p1"):
            logging.getLogger("tests.setup").info("value %s\x1b", values, extra={"n": 3})
        values[0] = "after"
    finally:
        stop_log_writer()  # writes out what is queued
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["message"] == "value ['before']\\x1b"
    assert (entry["job"], entry["participant"], entry["n"]) == ("job-7", "p1", 3)
