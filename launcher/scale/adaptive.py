"""The adaptive half of the shared limit: `AdaptiveRate` reasoning for a whole fleet.

`SharedAdaptiveRate` is `launcher.flow.adaptive.AdaptiveRate` itself (episodes,
accepted fraction, β, C, floor), fed with the fleet's numbers instead of one
launcher's, publishing its cuts through `SharedPacer` and adopting every
launcher's. See `launcher.scale.limits` for the whole design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.flow.adaptive import AdaptiveRate, RateMeter
from launcher.logs import get_logger

__all__ = ["FleetMeter", "SharedAdaptiveRate", "SharedCut", "SharedState"]

log = get_logger("launcher.scale.limits")


@dataclass(frozen=True, slots=True)
class SharedState:
    """One reservation's answer: the slot, and the fleet's state when it was claimed."""

    delay: float  # seconds to sleep before sending
    generation: int  # grows by one per cut; jumps when the state is new
    rate: float  # requests/s the script paced at (0: unlimited)
    fleet_rate: float  # the fleet's measured send rate (0: not known yet)
    curve: float  # the shared CUBIC curve now (0: never cut)
    last_max: float  # W_max of the last cut
    window: float  # K of the last cut (seconds)
    since_cut: float  # seconds since the last cut on Redis TIME (-1: never cut)
    fleet_sent: int  # the fleet's grants since the last cut

    @classmethod
    def parse(cls, reply: Any) -> SharedState:
        """Read the script's answer (a list of nine numbers as byte strings)."""
        delay, generation, rate, fleet, curve, last_max, window, since, sent = reply
        return cls(
            float(delay),
            int(float(generation)),
            float(rate),
            float(fleet),
            float(curve),
            float(last_max),
            float(window),
            float(since),
            int(float(sent)),
        )


@dataclass(frozen=True, slots=True)
class SharedCut:
    """A cut made here, to publish: the curve parameters and the generation it is based on."""

    based_on: int
    last_max: float
    window: float


class FleetMeter(RateMeter):
    """The send rate `AdaptiveRate` reasons with, for a launcher that is one of a fleet.

    While Redis answers: the fleet's rate as the script measured it. Without
    it: this launcher's own rate scaled up by its share, so the adaptive
    controller keeps reasoning in the fleet's numbers either way.
    """

    def __init__(self) -> None:
        """An empty meter, counting this launcher's sends."""
        super().__init__()
        self.fleet = 0.0  # from the last reservation (0: unknown)
        self.share = 1.0  # this launcher's part of the fleet's sends

    def rate_at(self, now: float) -> float:
        """The fleet's send rate (requests/s; 0.0 when unknown)."""
        if self.fleet > 0.0:
            return self.fleet
        return super().rate_at(now) / self.share


class SharedAdaptiveRate(AdaptiveRate):
    """`AdaptiveRate` on the fleet's curve: publishes its cuts, adopts everyone's.

    The decision to cut is `AdaptiveRate`'s own, fed with the fleet's send rate
    (`FleetMeter`) and the fleet's sends since the last cut. `SharedPacer`
    carries `pending_cut` to Redis and hands every answer to `adopt`.
    """

    def __init__(self, ceiling: float, *, enabled: bool = True) -> None:
        """A controller whose ceiling is the fleet's (the `--rate` of every launcher)."""
        meter = FleetMeter()
        super().__init__(ceiling=ceiling, enabled=enabled, sent=meter)
        self.meter = meter
        self.generation = 0  # the shared generation last adopted
        self.pending_cut: SharedCut | None = None
        self.adopted = 0  # shared cuts adopted, this launcher's own included
        self.local = False  # True while Redis is lost
        self._fleet_sent = 0

    def _cut(self, now: float) -> None:
        # The formula is AdaptiveRate's; only the episode's send count is the fleet's.
        if self.local:
            self._episode_sent = round(self._episode_sent / self.meter.share)
        else:
            self._episode_sent = max(self._episode_sent, self._fleet_sent)
        span = now - self._last_cut
        fill = self._fill
        recent = list(self._recent)
        super()._cut(now)
        self.pending_cut = SharedCut(self.generation, self._last_max, self._window)
        log.debug(
            "cut",
            last_max=round(self._last_max, 2),
            fleet_rate=round(self.meter.rate_at(now), 2),
            episode_sent=self._episode_sent,
            span=round(span, 3),
            fill=round(fill, 2),
            throttled=sum(recent),
            answers=len(recent),
            local=self.local,
        )

    def adopt(self, state: SharedState, now: float) -> bool:
        """Take the fleet's state from a reservation's answer; True on a new generation."""
        self.meter.fleet = state.fleet_rate
        self._fleet_sent = state.fleet_sent
        newer = state.generation > self.generation
        if newer:
            self.generation = state.generation
            self.pending_cut = None  # published, or another launcher's cut came first
            if state.since_cut < 0.0:  # a new shared state (first use, or Redis restarted)
                self._fill = self._last_max = self._window = 0.0
                self._last_cut = float("-inf")
            else:
                self._last_max = state.last_max
                self._window = state.window
                self._last_cut = now - state.since_cut
                self.adopted += 1
            # Answers to requests sent before the cut belong to the episode it ended.
            self._episode_answers = self._episode_sent = 0
            self._recent.clear()
        if state.since_cut >= 0.0:
            self._fill = state.curve
        return newer

    def go_local(self, share: float) -> None:
        """Redis is lost: reason from this launcher's own sends, scaled by `share`."""
        self.local = True
        self.meter.fleet = 0.0
        self.meter.share = share

    def go_shared(self) -> None:
        """Redis is back: the next answer brings the fleet's numbers again."""
        self.local = False
