"""What a load test leaves behind: the summary, the CSV time series, the report, live metrics.

* `build_summary` → the `--summary-json` object (interface.md's shape and more)
  and `format_summary` → the text printed on stdout at the end.
* `TimeseriesWriter` → `--timeseries` CSV, one row per second, written as each
  second closes (a long run's file is useful while it runs).
* `--report` is drawn by `launcher.loadtest.charts`.
* `metrics_server` → `--metrics-port`: Prometheus text format on `/metrics`,
  computed from the recorder when scraped (nothing on the per-request path).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import IO, Any

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from launcher.errors import UsageError
from launcher.loadtest.schedule import LoadSettings, ThresholdResult
from launcher.loadtest.stats import (
    SUMMARY_PERCENTILES,
    LatencyHistogram,
    Recorder,
    SecondRow,
    StageStats,
)
from launcher.run.metrics import serve_metrics

__all__ = [
    "LATENCY_BUCKETS",
    "TIMESERIES_COLUMNS",
    "TimeseriesWriter",
    "build_summary",
    "format_summary",
    "histogram_family",
    "live_line",
    "metrics_server",
    "quantile_label",
    "write_summary_json",
]

TIMESERIES_COLUMNS = (
    "second",
    "scheduled",
    "sent",
    "completed",
    "dropped",
    "errors",
    "p50_ms",
    "p99_ms",
    "in_flight",
    "target_rate",
    "service_p50_ms",
    "service_p99_ms",
    "lag_ms",
    "cpu_pct",
)
MetricsView = Callable[[], tuple[Recorder, float, SecondRow | None]]


# --- summary ----------------------------------------------------------------------------


def build_summary(
    recorder: Recorder,
    settings: LoadSettings,
    thresholds: Sequence[ThresholdResult],
    *,
    window: float,
    elapsed: float,
    target_requests: float,
    busy_seconds: int,
    cpu_pct: float,
    stop_reason: str,
    exit_code: int,
    endpoint: str,
    started_at: str,
) -> dict[str, Any]:
    """The run as one JSON-ready object; interface.md's fields first.

    `requests` counts answers (and transport failures) of requests sent;
    `achieved_rate` is requests sent per second of the send window (the
    schedule's length, or until it stopped); `errors` is keyed by error code,
    else HTTP status, else failure kind (`timeout`, `connect`, `disconnect`).
    """
    completed = recorder.completed
    summary = {
        "requests": completed,
        "achieved_rate": round(recorder.sent / window, 3) if window > 0 else 0.0,
        "dropped": recorder.dropped,
        "errors": dict(recorder.errors.most_common()),
        # Over answers only (`answers`); every value null when nothing answered.
        "latency_ms": recorder.latency.summary_ms(),
        "service_time_ms": recorder.service.summary_ms(),
        "answers": recorder.answered,
        "target_rate": round(target_requests / window, 3) if window > 0 else 0.0,
        "scheduled": recorder.scheduled,
        "sent": recorder.sent,
        "error_rate": round(recorder.error_count / completed, 6) if completed else 0.0,
        "duration_s": round(window, 3),
        "elapsed_s": round(elapsed, 3),
        "in_flight_peak": recorder.in_flight_peak,
        "max_in_flight": settings.max_in_flight,
        "retries": recorder.retries,
        "scheduler_lag_ms": {
            "mean": round(recorder.lag_sum / recorder.scheduled * 1000.0, 3)
            if recorder.scheduled
            else 0.0,
            "max": round(recorder.lag_max * 1000.0, 3),
        },
        "client_cpu_pct": round(cpu_pct, 1),
        "client_bottleneck_seconds": busy_seconds,
        "thresholds": [
            {
                "threshold": result.threshold.text,
                "value": None if result.value is None else round(result.value, 6),
                "shown": result.threshold.show(result.value),
                "pass": result.passed,
            }
            for result in thresholds
        ],
        "passed": all(result.passed for result in thresholds),
        "stop_reason": stop_reason,
        "exit_code": exit_code,
        "action": settings.action,
        "endpoint": endpoint,
        "started_at": started_at,
    }
    if len(recorder.stages) > 1:
        summary["stages"] = [
            _stage_summary(n, stage, window) for n, stage in enumerate(recorder.stages, 1)
        ]
    return summary


def _stage_summary(number: int, stage: StageStats, window: float) -> dict[str, Any]:
    """One stage of a ramp: what was sent in its window and how it fared."""
    length = stage.window(window)
    entry: dict[str, Any] = {
        "stage": number,
        "begin_s": round(stage.begin, 3),
        "duration_s": round(length, 3),
        "scheduled": stage.scheduled,
        "sent": stage.sent,
        "dropped": stage.dropped,
        "requests": stage.completed,
        "answers": stage.answered,
        "errors": stage.errors,
        "achieved_rate": round(stage.sent / length, 3) if length > 0 else 0.0,
        "error_rate": round(stage.errors / stage.completed, 6) if stage.completed else 0.0,
    }
    if stage.latency is not None:
        entry["latency_ms"] = stage.latency.summary_ms()
    return entry


def private_file(path: str, flag: str) -> IO[bytes]:
    """Open `path` for writing as a file only its owner can read (0600), truncated.

    Outputs name hosts, jobs and parameters: not for every local user. A
    symbolic link at `path` is refused (O_NOFOLLOW), so a planted link cannot
    redirect the write; an existing file is truncated and made 0600.
    """
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UsageError(f"{flag} {path}: is a symbolic link; refused") from None
        raise UsageError(f"{flag} {path}: {error.strerror}") from None
    with contextlib.suppress(OSError):  # (not ours to change: written with the mode it has)
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def write_summary_json(path: str, summary: dict[str, Any]) -> None:
    """Write the summary as one indented JSON object (UsageError if the path is unwritable)."""
    try:
        with private_file(path, "--summary-json") as out:
            out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as error:
        raise UsageError(f"--summary-json {path}: {error.strerror}") from None


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a person (printed on stdout at the end of a run)."""
    lines = [
        f"loadtest: {summary['requests']} requests in {summary['duration_s']:.2f} s, "
        f"achieved {summary['achieved_rate']:.1f}/s (target {summary['target_rate']:.1f}/s), "
        f"{summary['dropped']} dropped, {sum(summary['errors'].values())} errors "
        f"({summary['error_rate'] * 100:.2f}%)",
    ]
    names = [name for name, _ in SUMMARY_PERCENTILES] + ["max"]
    if summary.get("answers", 1):
        lines.append(f"{'':16}" + "".join(f"{name:>10}" for name in names))
        for label, key in (("latency ms", "latency_ms"), ("service time ms", "service_time_ms")):
            values = summary[key]
            lines.append(f"{label:16}" + "".join(_ms_cell(values[name]) for name in names))
    else:
        lines.append("latency         no answers (no request got an HTTP answer)")
    if summary["errors"]:
        top = ", ".join(f"{code}×{n}" for code, n in list(summary["errors"].items())[:8])
        lines.append(f"errors: {top}")
    lag = summary["scheduler_lag_ms"]
    lines.append(
        f"in flight peak {summary['in_flight_peak']} (cap {summary['max_in_flight']}), "
        f"scheduler late by {lag['mean']:.2f} ms on average (max {lag['max']:.1f} ms)"
        + (
            f", client was the bottleneck for {summary['client_bottleneck_seconds']} s"
            if summary["client_bottleneck_seconds"]
            else ""
        )
    )
    if summary["stop_reason"] != "complete":
        lines.append(f"stopped early: {summary['stop_reason']}")
    lines.extend(
        f"stage {stage['stage']:<3} {stage['sent']:>8} sent in {stage['duration_s']:.1f} s, "
        f"{stage['achieved_rate']:.1f}/s, {stage['errors']} errors, {stage['dropped']} dropped"
        for stage in summary.get("stages", ())
    )
    for result in summary["thresholds"]:
        verdict = "pass" if result["pass"] else "FAIL"
        lines.append(f"threshold {result['threshold']:24} {verdict:5} ({result['shown']})")
    if summary["thresholds"]:
        passed = summary["passed"]
        lines.append("thresholds: all passed" if passed else "thresholds: BREACHED (exit 99)")
    return "\n".join(lines)


def _ms_cell(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.2f}"


def _ms(value: float | None) -> str:
    """A live-view latency: `12.34 ms`, or `-` in a second with no answer."""
    return f"{'-':>8}   " if value is None else f"{value:8.2f} ms"


def live_line(row: SecondRow, in_flight: int) -> str:
    """One second of the live view."""
    line = (
        f"[{row.second + 1:>5}s] rate {row.rate:7.1f}/s (target {row.target_rate:.0f}/s)  "
        f"done {row.completed:>6}  in flight {in_flight:>5}  dropped {row.dropped:>4}  "
        f"p50 {_ms(row.p50_ms)}  p99 {_ms(row.p99_ms)}  errors {row.errors}"
    )
    if row.error_codes:
        line += " (" + ", ".join(f"{code}×{n}" for code, n in row.error_codes[:4]) + ")"
    return line


# --- time series ------------------------------------------------------------------------


class TimeseriesWriter:
    """`--timeseries` CSV: a header, then one row per second as the second closes."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = io.TextIOWrapper(
            private_file(path, "--timeseries"), encoding="utf-8", newline=""
        )
        self._csv = csv.writer(self._file)
        self._csv.writerow(TIMESERIES_COLUMNS)

    def write(self, row: SecondRow) -> None:
        """Append one second, and push it to the OS so `tail -f` sees it."""
        self._csv.writerow(
            (
                row.second,
                row.scheduled,
                row.sent,
                row.completed,
                row.dropped,
                row.errors,
                _cell(row.p50_ms),
                _cell(row.p99_ms),
                row.in_flight,
                f"{row.target_rate:.3f}",
                _cell(row.service_p50_ms),
                _cell(row.service_p99_ms),
                f"{row.lag_ms:.3f}",
                f"{row.cpu_pct:.1f}",
            )
        )
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _cell(value: float | None) -> str:
    """A latency cell: empty in a second with no answer (not a latency of 0)."""
    return "" if value is None else f"{value:.3f}"


# --- Prometheus -------------------------------------------------------------------------


class _LoadCollector(Collector):
    """Reads the recorder when scraped; the request path pays nothing for metrics."""

    def __init__(self, view: MetricsView) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        recorder, target, last = self._view()
        for name, help_text, value in (
            ("launcher_loadtest_scheduled", "Request slots that came due.", recorder.scheduled),
            ("launcher_loadtest_sent", "Requests sent.", recorder.sent),
            ("launcher_loadtest_completed", "Requests answered or failed.", recorder.completed),
            ("launcher_loadtest_dropped", "Slots dropped at the in-flight cap.", recorder.dropped),
            (
                "launcher_loadtest_retries",
                "Retries sent (with --max-attempts > 1).",
                recorder.retries,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        errors = CounterMetricFamily(
            "launcher_loadtest_errors", "Answers that were not a start, by code.", labels=["code"]
        )
        for code, count in recorder.errors.items():
            errors.add_metric([code], count)
        yield errors
        yield GaugeMetricFamily(
            "launcher_loadtest_in_flight", "Requests in flight now.", value=recorder.in_flight
        )
        yield GaugeMetricFamily(
            "launcher_loadtest_target_rate", "The schedule's rate now, per second.", value=target
        )
        for name, histogram, help_text in (
            ("launcher_loadtest_latency_seconds", recorder.latency, "from the scheduled time"),
            ("launcher_loadtest_service_seconds", recorder.service, "from the actual send"),
        ):
            yield histogram_family(name, f"Latency of answers {help_text}.", histogram)
            quantiles = GaugeMetricFamily(
                name.replace("_seconds", "_quantile_seconds"),
                f"Whole-run latency of answers {help_text}, by quantile (none before the "
                "first answer).",
                labels=["quantile"],
            )
            if histogram.count:
                values = histogram.percentiles_ms(q for _, q in SUMMARY_PERCENTILES)
                for _, q in SUMMARY_PERCENTILES:
                    quantiles.add_metric([quantile_label(q)], values[q] / 1000.0)
                quantiles.add_metric(["1"], histogram.max_ms() / 1000.0)
            yield quantiles
        if last is not None:
            second = GaugeMetricFamily(
                "launcher_loadtest_last_second_latency_seconds",
                "Latency from the scheduled time over the last full second, by quantile.",
                labels=["quantile"],
            )
            if last.p50_ms is not None and last.p99_ms is not None:
                second.add_metric(["0.5"], last.p50_ms / 1000.0)
                second.add_metric(["0.99"], last.p99_ms / 1000.0)
            yield second
            yield GaugeMetricFamily(
                "launcher_loadtest_last_second_rate",
                "Requests sent over the last full second, per second.",
                value=last.rate,
            )


# Latency bucket bounds in seconds (Prometheus `le` labels, written as here).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def quantile_label(percentile: float) -> str:
    """A percentile (0-100) as a clean quantile label: 99.9 -> "0.999", not 0.9990000000000001."""
    return format(round(percentile / 100.0, 10), "g")


def histogram_family(name: str, help_text: str, histogram: LatencyHistogram) -> Metric:
    """An HDR histogram as a Prometheus histogram: cumulative `le` buckets, `+Inf`, sum, count.

    Read when scraped; `histogram_quantile()` over it aggregates across
    generators, which quantile gauges cannot.
    """
    counts = histogram.buckets(LATENCY_BUCKETS)
    buckets = [
        (repr(bound), float(count)) for bound, count in zip(LATENCY_BUCKETS, counts, strict=True)
    ]
    buckets.append(("+Inf", float(histogram.count)))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=histogram.sum_s())


@asynccontextmanager
async def metrics_server(
    view: MetricsView, host: str, port: int, *, announce: Callable[[str], object]
) -> AsyncIterator[str]:
    """Serve the load test's `/metrics` while inside the block; yield its URL (see
    `launcher.run.metrics.serve_metrics`, which `launcher run` shares)."""
    async with serve_metrics(_LoadCollector(view), host, port, announce=announce) as url:
        yield url
