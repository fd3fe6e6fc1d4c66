"""Load-test policy as pure functions: the send schedule, thresholds, latency correction.

Nothing here reads a clock or does I/O, so tests/test_loadtest.py covers each
rule with tables of cases and hypothesis.

**Schedule.** A run is a list of stages, each a rate that moves linearly from
`start_rate` to `end_rate` over `duration` seconds (k6's ramping-arrival-rate;
a constant rate is a stage whose two rates are equal). The number of requests
due by time t is the integral N(t) of the rate, and request k (0-based) is due
at the t where N(t) = k. `Schedule.time_of(k)` solves that in closed form from
the start of the run, so the k-th send time never depends on how late any
earlier send was: a long run cannot drift.

**Thresholds.** `p99<500ms`, `service_p95<=200ms`, `max<2s`, `error_rate<1%`,
`rate>=490/s`, `dropped<1`: a metric, a comparison and a limit.

**Latency correction.** A request's latency is counted from the time it was
*scheduled*, not from when it actually left (wrk2's fix for coordinated
omission); its service time is what the HTTP exchange itself took.
"""

from __future__ import annotations

import math
import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from launcher.flow.pacing import parse_rate
from launcher.flow.policy import STARTED, RetryPolicy, parse_duration
from launcher.models import Reply, Verdict, failure_key

__all__ = [
    "READ_ONLY",
    "LoadAction",
    "LoadSettings",
    "Sample",
    "Schedule",
    "Stage",
    "Threshold",
    "ThresholdResult",
    "constant_stages",
    "error_key",
    "evaluate_thresholds",
    "measure",
    "parse_ramp",
    "parse_threshold",
    "planned_calls",
    "side_effect_warning",
]


# What a load test sends: `run`'s actions, or `list`, a read-only GET of the job list
# (filtered by the job's name) that probes the gateway, signing and service without
# starting anything.
LoadAction = Literal["start", "stop", "run-immediate", "list"]
READ_ONLY: frozenset[str] = frozenset({"list"})

# --- schedule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    """A rate moving linearly from `start_rate` to `end_rate` (requests/s) over `duration` s."""

    start_rate: float
    end_rate: float
    duration: float  # math.inf only for an open-ended constant stage (`--once` without end)

    @property
    def requests(self) -> float:
        """The integral of the rate over the stage: how many requests fall in it."""
        if math.isinf(self.duration):
            return math.inf
        return (self.start_rate + self.end_rate) / 2.0 * self.duration

    def offset_of(self, n: float) -> float:
        """Seconds into the stage at which `n` requests have come due (0 <= n <= requests).

        N(t) = r0·t + a·t² with a = (r1 - r0) / 2d, so t = 2n / (r0 + √(r0² + 4an)):
        the form without the cancellation of (-r0 + √…) / 2a, exact for a = 0 too.
        """
        if n <= 0.0:
            return 0.0
        r0 = self.start_rate
        if math.isinf(self.duration):
            return n / r0
        a = (self.end_rate - r0) / (2.0 * self.duration)
        root = math.sqrt(max(0.0, r0 * r0 + 4.0 * a * n))
        return min(self.duration, 2.0 * n / (r0 + root))

    def rate_at(self, offset: float) -> float:
        """The stage's target rate `offset` seconds into it."""
        if math.isinf(self.duration) or self.duration <= 0:
            return self.start_rate
        share = min(1.0, max(0.0, offset / self.duration))
        return self.start_rate + (self.end_rate - self.start_rate) * share


class Schedule:
    """When each request of a run is due, in seconds from the start of the run.

    Built once from the stages; `time_of(k)` is O(log stages). Request k is
    due at N⁻¹(k), so a run of total integral T sends ⌈T⌉ requests (5000 for
    500/s over 10 s, the first at 0 and the last at 9.998 s).
    """

    __slots__ = ("_begins", "_firsts", "duration", "requests", "stages")

    # A float integral such as 5000.000000001 still means 5000 requests.
    _EPSILON = 1e-9

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a schedule needs at least one stage")
        begins: list[float] = []
        firsts: list[float] = []
        clock = 0.0
        due = 0.0
        for index, stage in enumerate(stages):
            if stage.start_rate < 0 or stage.end_rate < 0 or not stage.duration > 0:
                raise ValueError("stage rates must be >= 0 and durations > 0")
            if math.isinf(stage.duration) and (
                index != len(stages) - 1 or stage.start_rate != stage.end_rate
            ):
                raise ValueError("only a last, constant stage may be open-ended")
            begins.append(clock)
            firsts.append(due)
            clock += stage.duration
            due += stage.requests
        if due <= 0.0:
            raise ValueError("the schedule sends nothing: every stage has rate 0")
        self.stages: tuple[Stage, ...] = tuple(stages)
        self._begins = begins
        self._firsts = firsts
        self.duration = clock  # seconds; math.inf when open-ended
        # How many requests the schedule sends (math.inf when open-ended).
        self.requests: float = due if math.isinf(due) else float(math.ceil(due - self._EPSILON))

    def time_of(self, k: int) -> float | None:
        """Seconds from the start at which request `k` (0-based) is due; None past the end."""
        if k < 0 or k >= self.requests:
            return None
        # The last stage whose first request is <= k: zero-rate stages (which hold no
        # request) share their first index with the next stage and are skipped.
        index = bisect_right(self._firsts, k) - 1
        return self._begins[index] + self.stages[index].offset_of(k - self._firsts[index])

    def rate_at(self, offset: float) -> float:
        """The target rate `offset` seconds into the run (0 after the end)."""
        if offset < 0 or offset >= self.duration:
            return 0.0
        index = bisect_right(self._begins, offset) - 1
        return self.stages[index].rate_at(offset - self._begins[index])

    def spans(self) -> tuple[tuple[float, float], ...]:
        """Each stage as (begin, duration), seconds from the start of the run."""
        return tuple(
            (begin, stage.duration) for begin, stage in zip(self._begins, self.stages, strict=True)
        )

    def due_by(self, offset: float) -> float:
        """N(offset): how many requests have come due `offset` seconds into the run."""
        due = 0.0
        for begin, stage in zip(self._begins, self.stages, strict=True):
            if offset <= begin:
                break
            span = min(offset - begin, stage.duration)
            due += (stage.start_rate + stage.rate_at(span)) / 2.0 * span
        return due


def constant_stages(rate: float, duration: float | None) -> tuple[Stage, ...]:
    """`--rate R --duration D` as one stage; no duration: open-ended (for `--once`)."""
    if not rate > 0:
        raise ValueError("the rate must be more than 0 (an open loop needs a rate)")
    return (Stage(rate, rate, duration if duration is not None else math.inf),)


_RAMP_STAGE = re.compile(
    r"^\s*(?P<start>[^:>-]*?)\s*(?:->\s*(?P<end>[^:]+?))?\s*:\s*(?P<d>.+?)\s*$"
)


def parse_ramp(text: str) -> tuple[Stage, ...]:
    """Parse `--ramp`: comma-separated `RATE:DURATION` or `FROM->TO:DURATION` stages.

    `0/s->500/s:30s,500/s:60s` ramps linearly from 0 to 500/s over 30 s, then
    holds 500/s for 60 s. `->TO:DURATION` ramps from where the previous stage
    ended (from 0 for the first). Rates as `parse_rate` (`500/s`, `120/m`),
    durations as `parse_duration` (`30s`, `2m`). ValueError with a hint otherwise.
    """
    hint = "write stages as 0/s->500/s:30s,500/s:60s (FROM->TO:DURATION or RATE:DURATION)"
    stages: list[Stage] = []
    previous = 0.0
    for part in text.split(","):
        match = _RAMP_STAGE.match(part)
        if match is None or not part.strip():
            raise ValueError(f"invalid --ramp stage {part.strip()!r}: {hint}")
        start_text, end_text = match.group("start"), match.group("end")
        try:
            if end_text is None:
                if not start_text:
                    raise ValueError("no rate")
                start = end = parse_rate(start_text)
            else:
                start = parse_rate(start_text) if start_text else previous
                end = parse_rate(end_text)
            duration = parse_duration(match.group("d"))
        except ValueError as error:
            raise ValueError(f"invalid --ramp stage {part.strip()!r}: {error}") from None
        stages.append(Stage(start, end, duration))
        previous = end
    if not any(stage.requests > 0 for stage in stages):
        raise ValueError(f"invalid --ramp {text!r}: every stage has rate 0, nothing would be sent")
    return tuple(stages)


# --- latency ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered request: `latency` from its scheduled time, `service` from its send."""

    latency: float
    service: float


def measure(scheduled: float, answered: float, service: float) -> Sample:
    """Correct for coordinated omission: latency runs from the *scheduled* send time.

    A request the client sent late (the event loop was busy, a pause, a
    burst) waited in the client before it waited in the service, and the
    user would have waited for both. `service` is the HTTP exchange alone.
    Latency is never reported below the service time: the two come from
    different clocks, and a few microseconds of skew must not make it so.
    """
    service = max(0.0, service)
    return Sample(max(answered - scheduled, service), service)


def error_key(reply: Reply, verdict: Verdict) -> str | None:
    """How an answer is counted: None for a start, else `models.failure_key` (as run
    reports count failures): `APIGW.0308`, `DLF.0100` when the body names a code;
    `503`, `404` when it does not (bare: the `errors` keys operators' scripts read);
    `timeout`, `connect`, `disconnect` when no answer was read (without the reason:
    a load test's keys stay a few).
    """
    if verdict is STARTED:
        return None
    return failure_key(reply.error_code, reply.status, reply.failure, bare_status=True)


# --- thresholds -------------------------------------------------------------------------

_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_THRESHOLD = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.()]*)(?:\s*@\s*(?P<stage>\S*?))?"
    r"\s*(?P<op><=|>=|<|>)\s*(?P<value>.+?)\s*$"
)
_STAGE = re.compile(r"^stage\s*(?P<n>\d+)$", re.IGNORECASE)
_PERCENTILE = re.compile(r"^p\(?(?P<q>\d+(?:\.\d+)?)\)?$")
_COUNTS = ("errors", "dropped", "requests")
_FRACTIONS = ("error_rate", "drop_rate")
# What a metric name may look like, for the error message.
_METRIC_HINT = (
    "p50..p99.9, max, mean (latency; prefix service_ for service time, e.g. service_p99), "
    "error_rate, drop_rate, rate, errors, dropped, requests"
)


@dataclass(frozen=True, slots=True)
class Threshold:
    """A pass/fail rule on one metric of the run, or of one stage of a ramp.

    `family` is `latency` or `service` (then `stat` is a percentile 0-100,
    `max` or `mean`, and `limit` is in milliseconds), `error_rate` or
    `drop_rate` (`limit` a fraction), `rate` (`limit` per second), or a count:
    `errors`, `dropped`, `requests`. `stage` (1-based) confines the rule to the
    requests scheduled in that stage of `--ramp` (`rate@stage2>=290/s`); None
    judges the whole run. `unit` is the unit the limit was written in (`ms`,
    `s`, `%`, `/m`...), so values print the way the rule was written.
    """

    text: str
    family: str
    stat: float | str | None
    op: str
    limit: float
    stage: int | None = None
    unit: str = ""

    @property
    def live(self) -> bool:
        """Whether the rule may be judged before the end (`--abort-on-fail`).

        The achieved rate and the request count are only meaningful for the
        whole run (or the whole stage), and a stage's rule only once the stage
        is over, so those are judged at the end alone.
        """
        return self.stage is None and self.family not in ("rate", "requests")

    def passes(self, value: float) -> bool:
        """True when `value` satisfies the rule."""
        return _OPERATORS[self.op](value, self.limit)

    def show(self, value: float | None) -> str:
        """`value` (in the rule's internal unit) in the unit the rule was written in.

        `error_rate<1%` shows 0.26%, `max<2s` shows 1.234 s, `rate>=120/m`
        shows 118.2/m; None (no answer to judge) shows "no data".
        """
        if value is None:
            return "no data"
        unit = self.unit
        if self.family in ("latency", "service"):
            if unit in ("s", "m", "h"):
                scaled = value / 1000.0 / _UNIT_SECONDS[unit]
                return f"{scaled:.4g} {unit}"
            return f"{value:.2f} ms"
        if self.family in _FRACTIONS:
            return f"{value * 100:.2f}%" if unit == "%" else f"{value:.4g}"
        if self.family == "rate":
            per = _RATE_UNITS.get(unit, 1.0)
            return f"{value * per:.1f}{unit or '/s'}"
        return f"{value:g}"


# Seconds per unit of a latency limit, and per-second factors of a rate's unit.
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_UNITS = {"/s": 1.0, "/m": 60.0, "/h": 3600.0}


def parse_threshold(text: str, *, stages: int | None = None) -> Threshold:
    """Parse `p99<500ms`, `service_p95<=200ms`, `error_rate<1%`, `rate>=490/s`, `dropped<1`.

    Latency limits need a unit (`ms`, `s`, `m`): `p99<500` is refused rather
    than guessed. Error and drop rates take `1%` or `0.01`; `rate` takes
    `490/s` or a bare per-second number. `METRIC@stageN` (N from 1) judges the
    requests scheduled in the N-th stage of a ramp only; with `stages` given
    (how many the schedule has), a stage past the last is refused. ValueError
    with a hint otherwise.
    """
    match = _THRESHOLD.match(text)
    if match is None:
        raise ValueError(
            f"invalid threshold {text!r}: write METRIC OP VALUE, e.g. p99<500ms, "
            "error_rate<1%, rate>=490/s, rate@stage2>=290/s (OP is <, <=, > or >=)"
        )
    name = match.group("metric").lower()
    op = match.group("op")
    value = match.group("value")
    family, stat = _metric(name, text)
    stage = None
    if match.group("stage") is not None:
        numbered = _STAGE.match(match.group("stage"))
        if numbered is None or int(numbered.group("n")) < 1:
            raise ValueError(
                f"invalid threshold {text!r}: name a stage of --ramp as @stage1, @stage2, ..."
            )
        stage = int(numbered.group("n"))
        if stages is not None and stage > stages:
            plural = "stage" if stages == 1 else "stages"
            raise ValueError(
                f"invalid threshold {text!r}: the schedule has {stages} {plural}, "
                f"so there is no stage {stage}"
            )
    try:
        limit = _limit(family, value)
    except ValueError as error:
        raise ValueError(f"invalid threshold {text!r}: {error}") from None
    return Threshold(text.strip(), family, stat, op, limit, stage, _unit(family, value))


def _unit(family: str, value: str) -> str:
    """The unit a limit was written in: `ms`, `s`, `m`, `h`, `%`, `/s`, `/m`, `/h` or ""."""
    value = value.strip().lower()
    if family in ("latency", "service"):
        found = re.search(r"(ms|s|m|h)$", value)
        # 1m30s is written in several units: show seconds.
        units = re.findall(r"(ms|s|m|h)", value)
        if found is None:
            return "ms"
        return found.group(1) if len(units) == 1 else "s"
    if family in _FRACTIONS:
        return "%" if value.endswith("%") else ""
    if family == "rate":
        found = re.search(r"/\s*([smh])[a-z]*$", value)
        return f"/{found.group(1)}" if found else "/s"
    return ""


def _metric(name: str, text: str) -> tuple[str, float | str | None]:
    if name in _COUNTS or name in _FRACTIONS or name == "rate":
        return name, None
    family = "latency"
    for prefix in ("latency_", "service_time_", "service_"):
        if name.startswith(prefix):
            family = "latency" if prefix == "latency_" else "service"
            name = name[len(prefix) :]
            break
    if name in ("max", "mean"):
        return family, name
    percentile = _PERCENTILE.match(name)
    if percentile is not None:
        q = float(percentile.group("q"))
        if 0.0 < q <= 100.0:
            return family, q
        raise ValueError(f"invalid threshold {text!r}: a percentile is above 0 and at most 100")
    raise ValueError(f"invalid threshold {text!r}: unknown metric {name!r}; use {_METRIC_HINT}")


def _limit(family: str, value: str) -> float:
    if family in ("latency", "service"):
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
            raise ValueError("give the latency a unit: 500ms, 2s")
        return parse_duration(value) * 1000.0
    if family in _FRACTIONS:
        if value.endswith("%"):
            number = float(value[:-1])
            if not 0.0 <= number <= 100.0:
                raise ValueError("a percentage is between 0% and 100%")
            return number / 100.0
        number = float(value)
        if not 0.0 <= number <= 1.0:
            raise ValueError("write a fraction between 0 and 1, or a percentage such as 1%")
        return number
    if family == "rate":
        return parse_rate(value)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("a count is a number >= 0")
    return number


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    """A threshold judged: the value it saw (None: no data yet) and whether it passed."""

    threshold: Threshold
    value: float | None
    passed: bool


def evaluate_thresholds(
    thresholds: Sequence[Threshold],
    lookup: Callable[[Threshold], float | None],
    *,
    final: bool = True,
) -> list[ThresholdResult]:
    """Judge each threshold on the value `lookup` gives for it.

    With `final=False` (during the run) only `live` thresholds are judged, and
    one without a value yet (no answer so far) passes; at the end a missing
    value fails, since a run with no answers cannot meet a latency goal.
    """
    results: list[ThresholdResult] = []
    for threshold in thresholds:
        if not final and not threshold.live:
            continue
        value = lookup(threshold)
        if value is None:
            results.append(ThresholdResult(threshold, None, not final))
        else:
            results.append(ThresholdResult(threshold, value, threshold.passes(value)))
    return results


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Everything a load test needs besides the client and the jobs."""

    schedule: Schedule
    action: LoadAction = "start"
    once: bool = False
    max_in_flight: int = 1024
    max_attempts: int = 1
    thresholds: tuple[Threshold, ...] = ()
    abort_on_fail: bool = False
    canary: bool = True
    live: bool = True
    live_json: bool = False  # live view as JSON log events instead of text lines
    summary_json: str | None = None
    timeseries: str | None = None
    report: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    handle_signals: bool = True
    # --yes: the operator knows the calls have side effects; no warning, no question.
    acknowledged: bool = False
    # The backoff between attempts (only with max_attempts > 1); its own max_attempts is unused.
    retry: RetryPolicy = field(default_factory=RetryPolicy)


# --- side effects -------------------------------------------------------------------------


def planned_calls(settings: LoadSettings, jobs: int) -> int:
    """How many requests the schedule sends (the canary not included): the schedule's
    count, or the manifest's when `--once` ends it sooner."""
    requests = settings.schedule.requests
    if settings.once:
        requests = min(requests, float(jobs))
    return int(requests)


def side_effect_warning(settings: LoadSettings, jobs: int, target: str) -> str | None:
    """The warning a load test with side effects gives before sending (None: read-only).

    Every `start` or `run-immediate` of a load test starts a real job on
    `target`, and every `stop` stops one; the operator is told how many, and
    how to probe without side effects.
    """
    if settings.action in READ_ONLY:
        return None
    calls = planned_calls(settings, jobs)
    canary = 1 if settings.canary else 0
    total = f"{calls + canary:,}"
    detail = f" ({calls:,} + 1 canary)" if canary else ""
    if settings.max_attempts > 1:
        total = f"up to {(calls + canary) * settings.max_attempts:,}"
        detail = f" ({calls + canary:,} x {settings.max_attempts} attempts)"
    effect = "stops a job" if settings.action == "stop" else "starts a real job run"
    where = f" to {target}" if target else ""
    return (
        f"this load test sends {total} {settings.action} calls{detail}{where}, "
        f"and each {effect} (manifest lines that name their own action use it). "
        "To probe the gateway without side effects use --action list (a read-only GET of "
        "the job list); --yes acknowledges this and silences the warning"
    )
