"""The log of refused calls, rate-limited: a peer decides how many calls it makes, not how
many log records they cost. Each (what, code, peer address) may log a burst, then one record
every few seconds, telling how many similar refusals it suppressed meanwhile; all of them
together are capped too. The fused_rejected_* metrics still count every refusal."""

from __future__ import annotations

import logging

from fused.common.runtime.logs import Throttle

log = logging.getLogger(__name__)

PER_PEER_BURST = 10
PER_PEER_PER_S = 0.2  # then one record every 5 s per (what, code, peer)
ALL_BURST = 100
ALL_PER_S = 5.0


def peer_host(peer: str) -> str:
    """The address without its port ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1"): a client's
    new connections share one bucket."""
    head, colon, port = peer.rpartition(":")
    return head if colon and port.isdigit() else peer


class RefusalLog:
    def __init__(self, throttle: Throttle | None = None) -> None:
        self._throttle = throttle or Throttle(PER_PEER_PER_S, PER_PEER_BURST, ALL_PER_S, ALL_BURST)

    def refused(self, level: int, what: str, code: str, peer: str, message: str) -> bool:
        """Log that `what` (a method or handler) was refused with `code` to `peer`, unless the
        throttle holds it back; True if a record was written."""
        host = peer_host(peer)
        suppressed = self._throttle.admit((what, code, host))
        if suppressed is None:
            return False
        note = f" ({suppressed} similar refusals not logged)" if suppressed else ""
        log.log(level, "refused %s from %s: %s: %s%s", what, host, code, message, note)
        return True


REFUSALS = RefusalLog()  # the process's one log of refusals: auth and the servicers share it
