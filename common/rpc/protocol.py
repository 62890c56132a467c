"""The participant protocol's version and the sizes both ends agree on.

Version 2 folds a round into as few calls as it can: a task's small artifacts travel inside
the task's reply, a small update inside the result, and the reply to a result carries the
participant's next task. A coordinator refuses agents that speak another version, with a
message that says which, rather than failing later in a way nobody can read.
"""

from __future__ import annotations

PROTOCOL_VERSION = 2
# Artifacts up to this size travel inline (a LeNet model is 0.18 MB, a FUSED adapter a few
# KB); larger ones stream in chunks. It keeps a reply carrying two of them well under the
# 4 MiB message limit.
INLINE_MAX_BYTES = 1 << 20


def version_refusal(version: int) -> str | None:
    """Why an agent speaking `version` cannot register; None when it can."""
    if version == PROTOCOL_VERSION:
        return None
    spoken = f"protocol {version}" if version else "protocol 1 (it names no version)"
    return (
        f"this agent speaks participant {spoken}; the coordinator speaks protocol "
        f"{PROTOCOL_VERSION}: upgrade the agent to the coordinator's release"
    )
