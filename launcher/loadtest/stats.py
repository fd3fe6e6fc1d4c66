"""What a load test measured: HDR histograms for the run, exact lists for each second.

`Recorder` is fed by the load-test engine (a slot was scheduled, sent or
dropped; an answer came back) and closed once a second by its ticker, which
turns the second into a `SecondRow` for the live view, the CSV time series and
the report. It keeps no clock of its own: every time is an argument, so the
tests drive it with made-up times.

Whole-run latencies go into HDR histograms (1 µs to 1 h at 3 significant
digits: fixed memory, however long the run). One second's latencies are few
(the rate's worth), so they are kept as plain lists and sorted exactly when
the second closes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from launcher.loadtest.schedule import Sample, Threshold

__all__ = [
    "SUMMARY_PERCENTILES",
    "LatencyHistogram",
    "Recorder",
    "SecondRow",
    "StageStats",
    "quantile",
]

# The percentiles every summary reports, in order; "max" follows them.
SUMMARY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour: far beyond any --timeout
_DIGITS = 3


def quantile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0-100) of sorted values; 0.0 for none (callers
    that can have none use `quantile_or_none`).

    The smallest value with at least q% of the values at or below it: the
    same definition HDR histograms use, so a second and the run agree.
    """
    if not ordered:
        return 0.0
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def quantile_or_none(ordered: Sequence[float], q: float) -> float | None:
    """`quantile` in milliseconds of sorted seconds, or None when there is no value."""
    return quantile(ordered, q) * 1000.0 if ordered else None


class LatencyHistogram:
    """Seconds in, milliseconds out; an HDR histogram of microseconds inside."""

    __slots__ = ("_hdr",)

    def __init__(self) -> None:
        self._hdr = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)

    def record(self, seconds: float) -> None:
        """Add one value (clamped to 1 µs..1 h, which the histogram can hold)."""
        micros = min(_HIGHEST_US, max(_LOWEST_US, round(seconds * 1e6)))
        self._hdr.record_value(micros)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return int(self._hdr.get_total_count())

    def percentiles_ms(self, percentiles: Iterable[float]) -> dict[float, float]:
        """{percentile: milliseconds} in one pass over the counts (empty: all 0.0)."""
        wanted = sorted(set(percentiles))
        if self.count == 0:
            return dict.fromkeys(wanted, 0.0)
        values = self._hdr.get_percentile_to_value_dict(wanted)
        return {q: float(values[q]) / 1000.0 for q in wanted}

    def max_ms(self) -> float:
        """The largest value recorded, in milliseconds (to the histogram's precision)."""
        return float(self._hdr.get_max_value()) / 1000.0 if self.count else 0.0

    def mean_ms(self) -> float:
        """The mean, in milliseconds."""
        return float(self._hdr.get_mean_value()) / 1000.0 if self.count else 0.0

    def summary_ms(self) -> dict[str, float | None]:
        """{"p50", "p90", "p95", "p99", "p99.9", "max", "mean"} in milliseconds, rounded to µs.

        Every value is None when nothing was recorded: a run with no answers has
        no latency, not a latency of 0 ms.
        """
        names = [name for name, _ in SUMMARY_PERCENTILES] + ["max", "mean"]
        if self.count == 0:
            return dict.fromkeys(names)
        values = self.percentiles_ms(q for _, q in SUMMARY_PERCENTILES)
        summary: dict[str, float | None] = {
            name: round(values[q], 3) for name, q in SUMMARY_PERCENTILES
        }
        summary["max"] = round(self.max_ms(), 3)
        summary["mean"] = round(self.mean_ms(), 3)
        return summary

    def buckets(self, bounds_s: Sequence[float]) -> list[int]:
        """Cumulative counts of values at or below each bound (seconds), as Prometheus wants.

        Read from the histogram's recorded values (a few hundred distinct ones
        at most), so it costs nothing on the request path; a value counts
        under a bound when its bucket's highest equivalent value is within it.
        """
        counts = [0] * len(bounds_s)
        if self.count == 0:
            return counts
        limits = [bound * 1e6 for bound in bounds_s]
        for item in self._hdr.get_recorded_iterator():
            value = self._hdr.get_highest_equivalent_value(item.value_iterated_to)
            for index, limit in enumerate(limits):
                if value <= limit:
                    counts[index] += item.count_at_value_iterated_to
        return counts

    def sum_s(self) -> float:
        """The sum of the values in seconds (mean x count, to the histogram's precision)."""
        return self.mean_ms() / 1000.0 * self.count

    def value_ms(self, stat: float | str | None) -> float | None:
        """A percentile (0-100), `max` or `mean` in milliseconds; None before any value."""
        if self.count == 0:
            return None
        if stat == "max":
            return self.max_ms()
        if stat == "mean":
            return self.mean_ms()
        if isinstance(stat, float):
            return self.percentiles_ms([stat])[stat]
        raise ValueError(f"unknown latency statistic {stat!r}")


@dataclass(frozen=True, slots=True)
class SecondRow:
    """One second of the run: counts of what happened in it, percentiles of what finished."""

    second: int  # 0 = the first second after the start
    length: float  # seconds covered (1.0 except a last, partial second)
    target_rate: float  # the schedule's rate in the middle of the second
    scheduled: int  # slots that came due (sent + dropped)
    sent: int
    completed: int  # answers (or failures) received
    dropped: int
    errors: int
    # Percentiles over the second's answers; None when nothing answered in it.
    p50_ms: float | None
    p99_ms: float | None
    service_p50_ms: float | None
    service_p99_ms: float | None
    in_flight: int  # the most requests in flight at once during the second
    lag_ms: float  # mean lateness of the scheduler's wake-ups
    cpu_pct: float  # process CPU over the second, % of one core
    error_codes: tuple[tuple[str, int], ...] = ()

    @property
    def rate(self) -> float:
        """Requests sent per second in this second."""
        return self.sent / self.length if self.length > 0 else 0.0


@dataclass(slots=True)
class StageStats:
    """What happened to the requests scheduled in one stage of the schedule.

    Counts are always kept (a few integer additions); the latency histograms
    only when a threshold judges a stage's latency (`Recorder(stage_latency=True)`).
    """

    begin: float  # seconds from the start of the run
    duration: float
    scheduled: int = 0
    sent: int = 0
    dropped: int = 0
    completed: int = 0
    answered: int = 0
    errors: int = 0
    latency: LatencyHistogram | None = None
    service: LatencyHistogram | None = None

    def window(self, elapsed: float) -> float:
        """How much of the stage had passed when sending stopped `elapsed` s into the run."""
        return max(0.0, min(self.duration, elapsed - self.begin))


@dataclass(slots=True)
class _Second:
    scheduled: int = 0
    sent: int = 0
    completed: int = 0
    dropped: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    services: list[float] = field(default_factory=list)
    in_flight_peak: int = 0
    lag_sum: float = 0.0


class Recorder:
    """Counts and latencies of a running load test, for the run and for each second.

    The engine calls `slot`, `done` and `finished`; the ticker calls
    `close_second` once a second (with the times it woke at). All on one
    event loop, so no locking.
    """

    def __init__(
        self,
        start: float,
        *,
        stages: Sequence[tuple[float, float]] = ((0.0, math.inf),),
        stage_latency: bool = False,
    ) -> None:
        self.start = start
        self.latency = LatencyHistogram()
        self.service = LatencyHistogram()
        self.scheduled = 0
        self.sent = 0
        self.dropped = 0
        self.completed = 0
        self.answered = 0  # completed with an HTTP answer (latency is over these alone)
        self.errors: Counter[str] = Counter()
        self.retries = 0
        # Per stage of the schedule, (begin, duration) each; slots name theirs by index.
        self.stages = [
            StageStats(
                begin,
                duration,
                latency=LatencyHistogram() if stage_latency else None,
                service=LatencyHistogram() if stage_latency else None,
            )
            for begin, duration in stages
        ]
        self.in_flight = 0
        self.in_flight_peak = 0
        self.lag_sum = 0.0
        self.lag_max = 0.0
        self.last_send = start
        self._second = _Second()
        self._closed = 0  # seconds closed so far

    @property
    def error_count(self) -> int:
        """Answers that were not a start, all codes together."""
        return sum(self.errors.values())

    def slot(self, deadline: float, now: float, *, sent: bool, stage: int = 0) -> None:
        """A slot of `stage` came due at `deadline`; the scheduler woke at `now` and sent it
        or dropped it."""
        lag = max(0.0, now - deadline)
        second = self._second
        counts = self.stages[stage]
        counts.scheduled += 1
        if sent:
            counts.sent += 1
        else:
            counts.dropped += 1
        self.scheduled += 1
        second.scheduled += 1
        self.lag_sum += lag
        second.lag_sum += lag
        self.lag_max = max(self.lag_max, lag)
        if sent:
            self.sent += 1
            second.sent += 1
            self.in_flight += 1
            self.last_send = now
            if self.in_flight > self.in_flight_peak:
                self.in_flight_peak = self.in_flight
            if self.in_flight > second.in_flight_peak:
                second.in_flight_peak = self.in_flight
        else:
            self.dropped += 1
            second.dropped += 1

    def done(
        self, sample: Sample, error: str | None, *, answered: bool = True, stage: int = 0
    ) -> None:
        """A request sent earlier (in `stage`) finished: record whether it failed and, when
        the service answered (`answered`), its latencies.

        A request that got no answer (connect failure, timeout, reset) has no
        latency to speak of: its time is the client's timeout or the
        resolver's, not the service's, so it is counted but not measured.
        """
        self.in_flight -= 1
        self.completed += 1
        second = self._second
        second.completed += 1
        counts = self.stages[stage]
        counts.completed += 1
        if answered:
            self.answered += 1
            counts.answered += 1
            self.latency.record(sample.latency)
            self.service.record(sample.service)
            second.latencies.append(sample.latency)
            second.services.append(sample.service)
            if counts.latency is not None and counts.service is not None:
                counts.latency.record(sample.latency)
                counts.service.record(sample.service)
        if error is not None:
            counts.errors += 1
            self.errors[error] += 1
            second.errors[error] += 1

    def abandoned(self) -> None:
        """A request sent earlier was cancelled before it finished (a second interrupt)."""
        self.in_flight -= 1

    def close_second(self, now: float, *, target_rate: float, cpu_pct: float) -> SecondRow:
        """Close the current second (which ends at `now`) and open the next."""
        second = self._second
        length = max(0.0, min(1.0, now - self.start - self._closed))
        latencies = sorted(second.latencies)
        services = sorted(second.services)
        row = SecondRow(
            second=self._closed,
            length=round(length, 6),
            target_rate=target_rate,
            scheduled=second.scheduled,
            sent=second.sent,
            completed=second.completed,
            dropped=second.dropped,
            errors=sum(second.errors.values()),
            p50_ms=quantile_or_none(latencies, 50.0),
            p99_ms=quantile_or_none(latencies, 99.0),
            service_p50_ms=quantile_or_none(services, 50.0),
            service_p99_ms=quantile_or_none(services, 99.0),
            # A second in which nothing was sent still had requests in flight.
            in_flight=max(second.in_flight_peak, self.in_flight),
            lag_ms=second.lag_sum / second.scheduled * 1000.0 if second.scheduled else 0.0,
            cpu_pct=cpu_pct,
            error_codes=tuple(second.errors.most_common()),
        )
        self._closed += 1
        self._second = _Second(in_flight_peak=self.in_flight)
        return row

    def value_for(self, threshold: Threshold, *, elapsed: float) -> float | None:
        """The current value of the metric `threshold` judges (None: no data yet), over the
        run or, for a stage's rule, over the requests scheduled in that stage.

        `elapsed` is the run's send window in seconds, for the achieved rate
        (a stage's rate is over the part of the stage inside that window).
        """
        if threshold.stage is not None:
            return self._stage_value(threshold, self.stages[threshold.stage - 1], elapsed)
        family = threshold.family
        if family == "latency":
            return self.latency.value_ms(threshold.stat)
        if family == "service":
            return self.service.value_ms(threshold.stat)
        if family == "error_rate":
            return self.error_count / self.completed if self.completed else None
        if family == "drop_rate":
            return self.dropped / self.scheduled if self.scheduled else None
        if family == "rate":
            return self.sent / elapsed if elapsed > 0 else None
        if family == "errors":
            return float(self.error_count)
        if family == "dropped":
            return float(self.dropped)
        if family == "requests":
            return float(self.completed)
        raise ValueError(f"unknown metric family {family!r}")

    @staticmethod
    def _stage_value(threshold: Threshold, stage: StageStats, elapsed: float) -> float | None:
        family = threshold.family
        if family in ("latency", "service"):
            histogram = stage.latency if family == "latency" else stage.service
            if histogram is None:
                raise ValueError("stage latency was not recorded (Recorder(stage_latency=True))")
            return histogram.value_ms(threshold.stat)
        if family == "error_rate":
            return stage.errors / stage.completed if stage.completed else None
        if family == "drop_rate":
            return stage.dropped / stage.scheduled if stage.scheduled else None
        if family == "rate":
            window = stage.window(elapsed)
            return stage.sent / window if window > 0 else None
        if family == "errors":
            return float(stage.errors)
        if family == "dropped":
            return float(stage.dropped)
        if family == "requests":
            return float(stage.completed)
        raise ValueError(f"unknown metric family {family!r}")
