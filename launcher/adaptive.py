"""Adaptive throttling: slow down on 429s, recover along a CUBIC curve.

This is the AWS SDK's "adaptive" retry mode rate limiter (C = 0.4, β = 0.7, a
smoothed measured rate, a 0.5 requests/s floor), with two changes that matter
when a launcher starts thousands of jobs against a limit it was not told:

- **One cut per round trip.** A burst of 429s for requests that all left
  before the last cut is one congestion signal, not fifty; like TCP, only a
  429 for a request sent after the last cut cuts again. (The AWS limiter cuts
  on every 429 and collapses the rate after a burst.)
- **The cut starts from what the service accepted.** The new rate is β times
  the smallest of the current fill rate, the measured send rate and the
  measured *accepted* rate (2xx and other final answers). At the start of an
  unlimited run the send rate can be ten times the service's limit; the
  accepted rate is the limit, so one cut lands near it instead of seven.

The configured rate is a ceiling the curve never exceeds. Everything here is
pure (time is an argument), so tests drive it with tables of timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["AdaptiveRate", "RateMeter"]

BETA = 0.7  # multiplicative decrease on a throttle
SCALE = 0.4  # CUBIC's C: how fast the rate climbs back
SMOOTH = 0.8  # weight of the newest bucket in the measured rate
BUCKET = 0.5  # seconds per measurement bucket
MIN_RATE = 0.5  # requests/s: the floor, so a throttled run still makes progress


@dataclass(slots=True)
class RateMeter:
    """A smoothed events-per-second measurement over half-second buckets.

    Until the first bucket is complete, `rate_at` estimates from the events so
    far, because the first 429 of an unlimited run arrives within milliseconds.
    """

    smoothed: float = 0.0
    _first: float = -1.0
    _bucket_start: float = -1.0
    _count: int = 0
    _total: int = 0

    def add(self, now: float) -> None:
        """Count one event at time `now` (seconds, monotonic)."""
        bucket = math.floor(now / BUCKET) * BUCKET
        if self._first < 0:
            self._first = now
            self._bucket_start = bucket
        self._count += 1
        self._total += 1
        if bucket > self._bucket_start:
            current = self._count / (bucket - self._bucket_start)
            if self.smoothed == 0.0:
                self.smoothed = current
            else:
                self.smoothed = current * SMOOTH + self.smoothed * (1.0 - SMOOTH)
            self._count = 0
            self._bucket_start = bucket

    def rate_at(self, now: float) -> float:
        """Events per second: the smoothed rate, or an early estimate (0.0 when unknown)."""
        if self.smoothed > 0.0:
            return self.smoothed
        span = now - self._first
        if self._first < 0 or self._total < 2 or span <= 0.0:
            return 0.0
        return self._total / span


@dataclass(slots=True)
class AdaptiveRate:
    """The sending rate to use, given sends, acceptances and throttles so far.

    `ceiling` is the configured rate (0: unlimited). `rate` is what the pacer
    should use now; 0 means unlimited (nothing throttled yet, no ceiling).
    """

    ceiling: float
    enabled: bool = True
    _fill: float = 0.0  # the curve's current rate; 0 until the first throttle
    _last_max: float = 0.0
    _last_cut: float = -math.inf
    _window: float = 0.0
    sent: RateMeter = field(default_factory=RateMeter)
    accepted: RateMeter = field(default_factory=RateMeter)
    cuts: int = 0

    @property
    def rate(self) -> float:
        """The rate the pacer should apply now (0.0: unlimited)."""
        if self._fill <= 0.0:
            return self.ceiling
        if self.ceiling > 0.0:
            return min(self.ceiling, self._fill)
        return self._fill

    @property
    def throttled(self) -> bool:
        """True once a throttle has shaped the rate."""
        return self._fill > 0.0

    def on_send(self, now: float) -> None:
        """A request left at `now`."""
        self.sent.add(now)

    def on_throttle(self, now: float, sent_at: float) -> bool:
        """A 429 arrived for a request sent at `sent_at`. True when the rate was cut."""
        if not self.enabled or sent_at < self._last_cut:
            return False  # sent before the last cut: already accounted for
        measured = (self.sent.rate_at(now), self.accepted.rate_at(now))
        candidates = [r for r in measured if r > 0.0]
        if self._fill > 0.0:
            candidates.append(self._fill)
        elif self.ceiling > 0.0:
            candidates.append(self.ceiling)
        base = min(candidates) if candidates else MIN_RATE
        self._last_max = base
        self._window = ((base * (1.0 - BETA)) / SCALE) ** (1.0 / 3.0)
        self._fill = max(MIN_RATE, base * BETA)
        self._last_cut = now
        self.cuts += 1
        return True

    def on_accept(self, now: float) -> None:
        """A final, non-throttled answer arrived: measure it and climb the curve."""
        self.accepted.add(now)
        if not self.enabled or self._fill <= 0.0:
            return
        elapsed = now - self._last_cut
        cubic = SCALE * (elapsed - self._window) ** 3 + self._last_max
        # Like AWS: never more than twice what is actually being sent.
        sent_rate = self.sent.rate_at(now)
        limit = 2.0 * sent_rate if sent_rate > 0.0 else cubic
        self._fill = max(MIN_RATE, min(cubic, limit))
