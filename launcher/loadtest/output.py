"""What a load test leaves behind: the summary, the CSV time series, the report, live metrics.

* `build_summary` → the `--summary-json` object (interface.md's shape and more)
  and `format_summary` → the text printed on stdout at the end.
* `TimeseriesWriter` → `--timeseries` CSV, one row per second, written as each
  second closes (a long run's file is useful while it runs).
* `write_report` → `--report`: an HTML page (or a PNG) with latency over time
  and the latency distribution, drawn with matplotlib's Agg backend.
* `metrics_server` → `--metrics-port`: Prometheus text format on `/metrics`,
  computed from the recorder when scraped (nothing on the per-request path).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from launcher.errors import UsageError
from launcher.loadtest.schedule import LoadSettings, ThresholdResult
from launcher.loadtest.stats import SUMMARY_PERCENTILES, LatencyHistogram, Recorder, SecondRow

__all__ = [
    "TIMESERIES_COLUMNS",
    "TimeseriesWriter",
    "build_summary",
    "format_summary",
    "live_line",
    "metrics_server",
    "write_report",
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
# Percentiles drawn in the distribution chart: dense towards the tail, where it matters.
_CHART_PERCENTILES = (
    *(float(q) for q in range(0, 90, 5)),
    *(90.0 + q / 2 for q in range(19)),
    99.0,
    99.25,
    99.5,
    99.75,
    99.9,
    99.95,
    99.99,
    99.995,
    99.999,
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
    return {
        "requests": completed,
        "achieved_rate": round(recorder.sent / window, 3) if window > 0 else 0.0,
        "dropped": recorder.dropped,
        "errors": dict(recorder.errors.most_common()),
        "latency_ms": recorder.latency.summary_ms(),
        "service_time_ms": recorder.service.summary_ms(),
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


def write_summary_json(path: str, summary: dict[str, Any]) -> None:
    """Write the summary as one indented JSON object (UsageError if the path is unwritable)."""
    try:
        Path(path).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
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
    lines.append(f"{'':16}" + "".join(f"{name:>10}" for name in names))
    for label, key in (("latency ms", "latency_ms"), ("service time ms", "service_time_ms")):
        values = summary[key]
        lines.append(f"{label:16}" + "".join(f"{values[name]:>10.2f}" for name in names))
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
    for result in summary["thresholds"]:
        value = "no data" if result["value"] is None else f"{result['value']:g}"
        verdict = "pass" if result["pass"] else "FAIL"
        lines.append(f"threshold {result['threshold']:24} {verdict:5} (value {value})")
    if summary["thresholds"]:
        passed = summary["passed"]
        lines.append("thresholds: all passed" if passed else "thresholds: BREACHED (exit 99)")
    return "\n".join(lines)


def live_line(row: SecondRow, in_flight: int) -> str:
    """One second of the live view."""
    line = (
        f"[{row.second + 1:>5}s] rate {row.rate:7.1f}/s (target {row.target_rate:.0f}/s)  "
        f"done {row.completed:>6}  in flight {in_flight:>5}  dropped {row.dropped:>4}  "
        f"p50 {row.p50_ms:8.2f} ms  p99 {row.p99_ms:8.2f} ms  errors {row.errors}"
    )
    if row.error_codes:
        line += " (" + ", ".join(f"{code}×{n}" for code, n in row.error_codes[:4]) + ")"
    return line


# --- time series ------------------------------------------------------------------------


class TimeseriesWriter:
    """`--timeseries` CSV: a header, then one row per second as the second closes."""

    def __init__(self, path: str) -> None:
        try:
            self._file: IO[str] = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise UsageError(f"--timeseries {path}: {error.strerror}") from None
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
                f"{row.p50_ms:.3f}",
                f"{row.p99_ms:.3f}",
                row.in_flight,
                f"{row.target_rate:.3f}",
                f"{row.service_p50_ms:.3f}",
                f"{row.service_p99_ms:.3f}",
                f"{row.lag_ms:.3f}",
                f"{row.cpu_pct:.1f}",
            )
        )
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


# --- report -----------------------------------------------------------------------------


def write_report(
    path: str, summary: dict[str, Any], rows: Sequence[SecondRow], recorder: Recorder
) -> None:
    """Draw the report: a PNG when `path` ends in `.png`, else an HTML page embedding it."""
    png = _draw(summary, rows, recorder.latency, recorder.service)
    try:
        if path.lower().endswith(".png"):
            Path(path).write_bytes(png)
        else:
            Path(path).write_text(_html(summary, png), encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--report {path}: {error.strerror}") from None


def _draw(
    summary: dict[str, Any],
    rows: Sequence[SecondRow],
    latency: LatencyHistogram,
    service: LatencyHistogram,
) -> bytes:
    # Imported here: matplotlib takes most of a second to import, and only --report needs it.
    # The object API with an Agg canvas touches no global pyplot state and needs no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    figure = Figure(figsize=(11, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    over_time, distribution = figure.subplots(2, 1, height_ratios=(3, 2))

    # Each row is one second: draw steps over it, not lines between its ends.
    seconds = [float(row.second) for row in rows]
    if rows:
        seconds.append(rows[-1].second + rows[-1].length)
        rows = [*rows, rows[-1]]
    steps = {"drawstyle": "steps-post"}
    over_time.plot(
        seconds, [r.p50_ms for r in rows], label="latency p50", color="tab:blue", **steps
    )
    over_time.plot(seconds, [r.p99_ms for r in rows], label="latency p99", color="tab:red", **steps)
    over_time.plot(
        seconds,
        [r.service_p99_ms for r in rows],
        "--",
        label="service p99",
        color="tab:orange",
        **steps,
    )
    over_time.set_xlabel("seconds since start")
    over_time.set_ylabel("ms (from the scheduled send time)")
    over_time.set_ylim(bottom=0)
    over_time.set_title(
        f"Latency over time: {summary['requests']} requests, "
        f"{summary['achieved_rate']:.1f}/s achieved (target {summary['target_rate']:.1f}/s)"
    )
    over_time.grid(alpha=0.3)
    rate_axis = over_time.twinx()
    rate_axis.plot(
        seconds, [r.rate for r in rows], color="tab:green", alpha=0.5, label="sent/s", **steps
    )
    rate_axis.plot(
        seconds, [r.target_rate for r in rows], ":", color="tab:green", label="target/s", **steps
    )
    drops = [(r.second + 0.5, r.dropped) for r in rows[:-1] if r.dropped]
    if drops:
        rate_axis.bar(
            [s for s, _ in drops],
            [d for _, d in drops],
            width=0.8,
            color="tab:gray",
            alpha=0.5,
            label="dropped",
        )
    rate_axis.set_ylabel("requests per second")
    top = max([r.target_rate for r in rows] + [r.rate for r in rows] + [1.0])
    rate_axis.set_ylim(0, top * 1.25)  # room above the lines for the legend
    handles, labels = over_time.get_legend_handles_labels()
    more_handles, more_labels = rate_axis.get_legend_handles_labels()
    over_time.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize=8)

    # The HdrHistogram percentile chart: x = 1/(1-q) on a log axis spreads out the tail.
    for label, histogram, style in (
        ("latency", latency, "-"),
        ("service time", service, "--"),
    ):
        if histogram.count == 0:
            continue
        values = histogram.percentiles_ms(_CHART_PERCENTILES)
        xs = [1.0 / (1.0 - q / 100.0) for q in _CHART_PERCENTILES]
        distribution.plot(xs, [values[q] for q in _CHART_PERCENTILES], style, label=label)
    distribution.set_xscale("log")
    ticks = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)
    distribution.xaxis.set_major_locator(FixedLocator([1.0 / (1.0 - q / 100.0) for q in ticks]))
    distribution.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: f"{(1.0 - 1.0 / x) * 100:g}%")
    )
    distribution.xaxis.set_minor_locator(FixedLocator([]))
    distribution.set_xlabel("percentile")
    distribution.set_ylabel("ms")
    distribution.set_title("Latency distribution (whole run)")
    distribution.grid(alpha=0.3)
    distribution.legend(loc="upper left", fontsize=8)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _html(summary: dict[str, Any], png: bytes) -> str:
    names = [name for name, _ in SUMMARY_PERCENTILES] + ["max"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><th>{label}</th>"
        + "".join(f"<td>{summary[key][name]:.2f}</td>" for name in names)
        + "</tr>"
        for label, key in (("latency ms", "latency_ms"), ("service time ms", "service_time_ms"))
    )
    thresholds = "".join(
        f"<tr><td><code>{html.escape(t['threshold'])}</code></td>"
        f"<td>{'no data' if t['value'] is None else format(t['value'], 'g')}</td>"
        f"<td class={'pass' if t['pass'] else 'fail'}>{'pass' if t['pass'] else 'FAIL'}</td></tr>"
        for t in summary["thresholds"]
    )
    errors = "".join(
        f"<tr><td>{html.escape(code)}</td><td>{n}</td></tr>"
        for code, n in summary["errors"].items()
    )
    facts = html.escape(format_summary(summary))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>launcher loadtest report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1150px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
.pass {{ color: #070; }} .fail {{ color: #b00; font-weight: bold; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>Load test: {html.escape(summary["endpoint"])}</h1>
<p>Started {html.escape(summary["started_at"])};
action <code>{html.escape(summary["action"])}</code>;
latency counts from the <em>scheduled</em> send time (corrected for coordinated omission),
service time from the actual send.</p>
<table><tr><th></th>{header}</tr>{rows}</table>
{"<h2>Thresholds</h2><table>" + thresholds + "</table>" if thresholds else ""}
{"<h2>Errors</h2><table>" + errors + "</table>" if errors else ""}
<img alt="latency over time and latency distribution" src="data:image/png;base64,{image}"
 style="max-width: 100%">
<h2>Summary</h2><pre>{facts}</pre>
</body></html>
"""


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
        quantiles = [(str(q / 100.0), q) for _, q in SUMMARY_PERCENTILES]
        for name, histogram, help_text in (
            ("launcher_loadtest_latency_seconds", recorder.latency, "from the scheduled time"),
            ("launcher_loadtest_service_seconds", recorder.service, "from the actual send"),
        ):
            family = GaugeMetricFamily(
                name, f"Whole-run latency {help_text}, by quantile.", labels=["quantile"]
            )
            values = histogram.percentiles_ms(q for _, q in quantiles)
            for label, q in quantiles:
                family.add_metric([label], values[q] / 1000.0)
            family.add_metric(["1"], histogram.max_ms() / 1000.0)
            yield family
        if last is not None:
            second = GaugeMetricFamily(
                "launcher_loadtest_last_second_latency_seconds",
                "Latency from the scheduled time over the last full second, by quantile.",
                labels=["quantile"],
            )
            second.add_metric(["0.5"], last.p50_ms / 1000.0)
            second.add_metric(["0.99"], last.p99_ms / 1000.0)
            yield second
            yield GaugeMetricFamily(
                "launcher_loadtest_last_second_rate",
                "Requests sent over the last full second, per second.",
                value=last.rate,
            )


@asynccontextmanager
async def metrics_server(
    view: MetricsView, host: str, port: int, *, announce: Callable[[str], object]
) -> AsyncIterator[str]:
    """Serve `/metrics` (Prometheus text format) while inside the block; yield its URL.

    aiohttp's server runs on the event loop by itself, like the simulator's,
    so no task is needed. A port in use is a UsageError (exit 2), before any
    request is sent.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LoadCollector(view))

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
    await runner.setup()
    try:
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as error:
            raise UsageError(f"--metrics-port {port}: {error.strerror or error}") from None
        bound = runner.addresses[0][1]
        url = f"http://{host}:{bound}/metrics"
        announce(url)
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
