"""Adaptive throttling: slow down on 429s, recover along a CUBIC curve.

This is the AWS SDK's "adaptive" retry mode rate limiter (C = 0.4, β = 0.7, a
smoothed measured send rate, a 0.5 requests/s floor), with two changes that
matter when a launcher starts thousands of jobs against a limit it was not told:

- **One cut per congestion episode.** A burst of 429s is one signal, not
  fifty. Only answers to requests sent after the last cut count towards the
  next one (like TCP), and a cut needs `MIN_SAMPLE` of them, because right
  after a burst the gateway's bucket is empty and rejects a few more requests
  even at the lower rate. (The AWS limiter cuts on every 429 and collapses.)
- **A stray 429 is noise, not a limit.** A cut needs at least
  `THROTTLE_SIGNAL` (5%) of the recent answers to be 429s. A gateway's limit,
  once crossed, throttles a growing share of requests; an occasional 429 among
  hundreds of starts (a busy backend) would otherwise pin the rate far below
  what the service allows: 5% random 429s at a 30/s ceiling drove the AWS-style
  limiter down to ~9 starts/s, and with this rule it holds ~20/s.
- **The cut starts from what the service accepts.** The new rate is β times
  the recent send rate *times the fraction of recent answers that were not
  429*. Near the limit that fraction is ~1 and this is the AWS rule; at the
  start of an unlimited run, sending ten times the limit, it is ~1/10, so the
  first cuts land near the limit instead of halving down to it one round
  trip at a time while thousands of requests are throttled.

The configured rate is a ceiling the curve never exceeds. Everything here is
pure (time is an argument), so tests drive it with tables of timestamps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["AdaptiveRate", "RateMeter"]

BETA = 0.7  # multiplicative decrease on a throttle
SCALE = 0.4  # CUBIC's C: how fast the rate climbs back
SMOOTH = 0.8  # weight of the newest bucket in the measured rate
BUCKET = 0.5  # seconds per measurement bucket
MIN_RATE = 0.5  # requests/s: the floor, so a throttled run still makes progress
MIN_SAMPLE = 16  # answers to requests sent after the last cut needed before the next cut
RECENT = 64  # how many recent answers the accepted fraction is measured over
THROTTLE_SIGNAL = 0.05  # share of recent answers that must be 429s before a cut
ESTIMATE_MARGIN = 0.9  # how far below an estimated limit to land when far above it


@dataclass(slots=True)
class RateMeter:
    """A smoothed events-per-second measurement over half-second buckets.

    Until the first bucket is complete, `rate_at` estimates from the events so
    far, because the first 429 of an unlimited run arrives within milliseconds.
    """

    smoothed: float = 0.0
    _first: float = -1.0
    _bucket_start: float = -1.0
    # Where the current bucket ends (exact: buckets start at multiples of 0.5 s); an
    # event before it only counts, which is all but one event per bucket.
    _bucket_end: float = -math.inf
    _count: int = 0
    _total: int = 0

    def add(self, now: float) -> None:
        """Count one event at time `now` (seconds, monotonic)."""
        self._count += 1
        self._total += 1
        if now < self._bucket_end:
            return
        bucket = math.floor(now / BUCKET) * BUCKET
        if self._first < 0:
            self._first = now
            self._bucket_start = bucket
        self._bucket_end = bucket + BUCKET
        if bucket > self._bucket_start:
            # The first bucket started at the first event, not at its boundary: a run
            # that began 50 ms before a boundary would otherwise read a tenth of its rate.
            start = max(self._bucket_start, self._first)
            current = self._count / max(bucket - start, 1e-3)
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
    """The sending rate to use, given sends, answers and throttles so far.

    `ceiling` is the configured rate (0: unlimited). `rate` is what the pacer
    should use now; 0 means unlimited (nothing throttled yet, no ceiling).
    """

    ceiling: float
    enabled: bool = True
    sent: RateMeter = field(default_factory=RateMeter)
    cuts: int = 0
    _fill: float = 0.0  # the curve's current rate; 0 until the first cut
    _last_max: float = 0.0
    _last_cut: float = -math.inf
    _window: float = 0.0
    # The last RECENT answers, True = throttled.
    _recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    _episode_answers: int = 0
    _episode_sent: int = 0

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
        self._episode_sent += 1

    def on_answer(self, now: float, sent_at: float, throttled: bool) -> bool:
        """An answer arrived for a request sent at `sent_at`. True when the rate was cut."""
        if not self.enabled or sent_at < self._last_cut:
            return False  # sent before the last cut: that episode is already answered
        self._episode_answers += 1
        self._recent.append(throttled)
        if not throttled:
            if self._fill > 0.0:  # else no curve to climb yet: the common case at --rate 0
                self._climb(now)
            return False
        if self._episode_answers < MIN_SAMPLE:
            return False
        recent = self._recent
        if sum(recent) < THROTTLE_SIGNAL * len(recent):
            return False  # a stray 429 among many accepted answers is noise, not a limit
        self._cut(now)
        return True

    def _cut(self, now: float) -> None:
        recent = self._recent
        # None accepted in the sample says "below 1 in len(recent)", not zero:
        # estimate half of that rather than collapse to the floor.
        accepted = max(1.0 - sum(recent) / len(recent), 0.5 / len(recent))
        span = now - self._last_cut
        if span >= 2 * BUCKET:
            sending = self.sent.rate_at(now)
        else:
            sending = self._episode_sent / span if span > 0.0 else self._fill
        if self._fill > 0.0:
            sending = min(sending, self._fill)
        base = sending * accepted
        if self.ceiling > 0.0:
            base = min(base, self.ceiling)
        base = max(MIN_RATE, base)
        # Far above the limit, `base` already estimates the limit itself: back off
        # just below it. Near the limit, `base` is the rate that crossed it: CUBIC's β.
        factor = BETA if accepted >= 0.5 else ESTIMATE_MARGIN
        self._last_max = base
        self._window = ((base * (1.0 - factor)) / SCALE) ** (1.0 / 3.0)
        self._fill = max(MIN_RATE, base * factor)
        self._last_cut = now
        self._episode_answers = 0
        self._episode_sent = 0
        self._recent.clear()
        self.cuts += 1

    def _climb(self, now: float) -> None:
        elapsed = now - self._last_cut
        cubic = SCALE * (elapsed - self._window) ** 3 + self._last_max
        # Like AWS: never more than twice what is actually being sent.
        sent_rate = self.sent.rate_at(now)
        limit = 2.0 * sent_rate if sent_rate > 0.0 else cubic
        self._fill = max(MIN_RATE, min(cubic, limit))
