"""When requests may leave: rate parsing and an evenly paced token bucket.

The bucket is GCRA (the "virtual scheduling" form of a token bucket): it keeps
one number, the theoretical arrival time of the next request, so every
reservation is O(1) and the spacing between sends is exact on a monotonic
clock instead of bursting at the top of each second. `burst` > 1 lets that many
requests go back to back after an idle spell, as a classic bucket would.

`TokenBucket` is pure (time is an argument) so tables of cases test it fully;
`Pacer` is the thin async wrapper the dispatcher awaits.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

__all__ = ["STALL", "Pacer", "RateGate", "TokenBucket", "format_rate", "parse_rate"]

STALL = 0.010  # seconds of lateness after which a send slot counts as stale

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER_SECOND = {
    None: 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rate(text: str) -> float:
    """Parse `30/s`, `120/m`, `5000/h` or a bare number (per second) into requests per second.

    `0` means unlimited and parses to 0.0. Raises ValueError with a message
    fit for the user on anything else.
    """
    match = _RATE.match(text)
    if match is None:
        raise ValueError(
            f"invalid rate {text!r}: write it as 30/s, 120/m, 5000/h, or 0 for unlimited"
        )
    amount = float(match.group(1))
    if not math.isfinite(amount):
        raise ValueError(f"invalid rate {text!r}: must be finite")
    return amount / _PER_SECOND[match.group(2)]


def format_rate(per_second: float) -> str:
    """The inverse of `parse_rate` for display: `30/s`, `2/m`-style for slow rates, `unlimited`."""
    if per_second <= 0:
        return "unlimited"
    if per_second >= 1:
        return f"{per_second:g}/s"
    return f"{per_second * 60:g}/m"


@dataclass(slots=True)
class TokenBucket:
    """An evenly paced token bucket (GCRA) on a caller-supplied clock.

    `rate` is requests per second (0 or less: unlimited); `burst` is how many
    requests may go back to back after an idle spell (1: perfectly even pacing).
    """

    rate: float
    burst: int = 1
    generation: int = 0  # bumped by every rate change
    _tat: float = -math.inf  # theoretical arrival time of the next request

    def reserve(self, now: float) -> float:
        """Claim the next send slot and return how long to wait for it (0.0: go now).

        Each call claims its own slot, so N concurrent callers are spread out
        evenly: the k-th waits about k/rate.
        """
        if self.rate <= 0:
            return 0.0
        interval = 1.0 / self.rate
        earliest = self._tat - (self.burst - 1) * interval
        send_at = max(now, earliest)
        self._tat = max(self._tat, now) + interval
        return send_at - now

    def ready_in(self, now: float) -> float:
        """How long until `reserve` would return 0.0 (go now); claims nothing."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, self._tat - (self.burst - 1) / self.rate - now)

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from now on.

        A *lower* rate applies to slots already claimed too: they are
        forgotten and `generation` moves on, so a `Pacer` caller still waiting
        for one claims a new slot under the new rate when it wakes. Otherwise,
        after a cut, every worker already holding a slot would still send at
        the old rate, and a gateway that just throttled us would see it for
        another `concurrency / old rate` seconds. A *higher* rate re-spaces the
        claimed backlog onto the shorter interval and keeps it.
        """
        old = self.rate
        slower = rate > 0 and (old <= 0 or rate < old)
        if slower:
            self._tat = min(self._tat, now)
            self.generation += 1
        elif rate > 0 and old > 0 and self._tat > now:
            self._tat = now + (self._tat - now) * (old / rate)
        self.rate = rate


class RateGate(Protocol):
    """What the dispatcher paces with: a local `Pacer`, or one shared through Redis."""

    @property
    def rate(self) -> float:
        """Requests per second allowed now (0: unlimited)."""

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate (the adaptive controller's verdict) from `now` on."""

    async def wait(self) -> None:
        """Return when the caller may send."""


class Pacer:
    """Async front of a `TokenBucket`: `await pacer.wait()` before each send."""

    __slots__ = ("_bucket", "_clock")

    def __init__(self, bucket: TokenBucket, clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = bucket
        self._clock = clock

    @property
    def bucket(self) -> TokenBucket:
        """The bucket behind this pacer."""
        return self._bucket

    @property
    def rate(self) -> float:
        """Requests per second allowed now (0: unlimited)."""
        return self._bucket.rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from `now` on (see `TokenBucket.set_rate`)."""
        self._bucket.set_rate(rate, now)

    async def wait(self) -> None:
        """Sleep until this caller's slot; return at once when the rate is unlimited.

        If the rate changed while sleeping, the slot was claimed under the old
        rate: claim one under the new rate instead.
        """
        bucket = self._bucket
        clock = self._clock
        while True:
            generation = bucket.generation
            now = clock()
            delay = bucket.reserve(now)
            if delay <= 0.0:
                return
            await anyio.sleep(delay)
            if bucket.generation != generation:
                continue  # the rate changed while we slept: claim a slot at the new rate
            # Woken far too late (the event loop or the machine stalled)? Then the
            # slots of every other sleeper have passed too, and all of them going
            # now would be a burst: claim a fresh slot instead. Small lateness is
            # caught up, so the average rate stays exact.
            if clock() - (now + delay) <= max(2.0 / bucket.rate, STALL):
                return
