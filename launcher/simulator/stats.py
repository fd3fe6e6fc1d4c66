"""`SimStats`: what the simulator saw, above all how many calls took effect per job."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["JobKey", "SimStats"]

JobKey = tuple[str, str | None, str]
"""(project id, workspace or None for the default one, job name): what state is kept per."""


@dataclass(eq=False)
class SimStats:
    """What the simulator saw. `/_sim/stats` serves `to_json()`; it is itself never counted.

    `starts`, `stops` and `runs` count the calls that TOOK EFFECT per job
    (a `reset_after` call counts, a `reset_before` one does not), which is what
    exactly-once tests compare. `by_status` counts answers sent; resets send
    none and are in `faults` instead, so `sum(by_status) + resets == requests`.
    """

    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind: 503, 500, 429, reset_before, reset_after, slow, 504_after,
    refused, late."""
    starts: Counter[JobKey] = field(default_factory=Counter)
    stops: Counter[JobKey] = field(default_factory=Counter)
    runs: Counter[JobKey] = field(default_factory=Counter)
    rate_limited: int = 0
    """429s from `rate_limit` (not from `fail_429`)."""
    bad_signatures: int = 0
    """401s for an invalid AK/SK signature (not counting answers to a locked AK)."""
    locked_out: int = 0
    """401s answered because the AK was locked after repeated bad signatures."""
    stop_bodies: int = 0
    """`stop` calls that came with a body (the SDK sends none)."""
    arrivals: array[float] = field(default_factory=lambda: array("d"))
    """`time.monotonic()` at the arrival of each counted request, in arrival order."""

    @property
    def resets(self) -> int:
        """Connections reset instead of answered."""
        return self.faults["reset_before"] + self.faults["reset_after"]

    def took_effect(
        self, action: str, project: str, name: str, workspace: str | None = None
    ) -> int:
        """How many `action` calls (start, stop, run-immediate) took effect for one job."""
        counter = {"start": self.starts, "stop": self.stops, "run-immediate": self.runs}[action]
        return counter[(project, workspace, name)]

    def achieved_rate(self) -> float:
        """Requests/s between the first and the last arrival (0 with fewer than two)."""
        count = len(self.arrivals)
        if count < 2:
            return 0.0
        span = self.arrivals[-1] - self.arrivals[0]
        return (count - 1) / span if span > 0 else 0.0

    def busiest_window(self, seconds: float = 0.1) -> int:
        """The most arrivals within any window of `seconds` (half-open, any start time)."""
        arrivals = self.arrivals
        best = 0
        low = 0
        for high, now in enumerate(arrivals):
            while now - arrivals[low] >= seconds:
                low += 1
            best = max(best, high - low + 1)
        return best

    def to_json(self) -> dict[str, object]:
        """The counters as plain JSON types (job keys become objects)."""
        keys = sorted(
            set(self.starts) | set(self.stops) | set(self.runs),
            key=lambda k: (k[0], k[1] or "", k[2]),
        )
        return {
            "requests": self.requests,
            "by_route": dict(self.by_route),
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "resets": self.resets,
            "rate_limited": self.rate_limited,
            "bad_signatures": self.bad_signatures,
            "locked_out": self.locked_out,
            "stop_bodies": self.stop_bodies,
            "arrivals": len(self.arrivals),
            "achieved_rate": self.achieved_rate(),
            "busiest_100ms": self.busiest_window(0.1),
            "effects": [
                {
                    "project": k[0],
                    "workspace": k[1],
                    "name": k[2],
                    "start": self.starts[k],
                    "stop": self.stops[k],
                    "run-immediate": self.runs[k],
                }
                for k in keys
            ],
        }

    def reset(self) -> None:
        """Zero every counter (the simulated jobs keep their state)."""
        self.requests = 0
        self.rate_limited = 0
        self.bad_signatures = 0
        self.locked_out = 0
        self.stop_bodies = 0
        for counter in (self.by_route, self.by_status, self.faults):
            counter.clear()
        for effects in (self.starts, self.stops, self.runs):
            effects.clear()
        self.arrivals = array("d")
