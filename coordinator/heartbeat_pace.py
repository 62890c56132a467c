"""How often busy agents beat: the configured interval, longer in large fleets.

An agent beats while it runs a task, at the interval its Register reply named. 10,000 agents
at 5 s send 2,000 heartbeats a second, more than a core of the coordinator serves
(bench.load), so an agent that registers into a fleet of N participants is told to beat every
max(heartbeat_interval_s, N / max_heartbeats_per_s) seconds. The silence after which an
agent counts as offline grows in proportion (the operator's ratio of offline_after_s to
heartbeat_interval_s), for the longest interval told so far: no agent is reaped for keeping
to the interval it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fused.coordinator.fleet import Fleet


@dataclass
class HeartbeatPace:
    fleet: Fleet
    interval_s: float
    offline_after_s: float
    per_s: float  # heartbeats a second the fleet should stay under; 0: always interval_s
    known: set[str] = field(default_factory=set)  # participants with a record: the fleet's size
    longest_s: float = 0.0  # the longest interval told so far

    def interval_for(self, pid: str) -> float:
        """The interval to tell `pid`, registering now."""
        self.known.add(pid)
        interval = self.interval_s
        if self.per_s > 0:
            interval = max(interval, len(self.known) / self.per_s)
        if interval > self.longest_s:
            self.longest_s = interval
            if self.interval_s > 0:
                self.fleet.allow_silence(self.offline_after_s * interval / self.interval_s)
        return interval
