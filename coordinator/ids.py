"""Identifiers the coordinator mints for jobs, tasks and model versions."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """A fresh id such as "job-1a2b3c4d5e": a prefix that says what it names, 40 random bits."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
