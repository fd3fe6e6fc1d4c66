"""`--report`: an HTML page (or a PNG) of a load test, drawn with matplotlib's Agg backend.

Three charts: latency over time (with the sent and target rates), errors per
second by code (so a wall of 429s cannot hide behind a latency line), and
the whole run's latency distribution. Each threshold is drawn as a line on the
chart of its metric, over the stage it judges (`rate@stage2>=290/s`) or the
whole run. What to draw is worked out by pure functions (`threshold_lines`,
`error_series`) that tests check without a picture.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.errors import UsageError
from launcher.loadtest.output import format_summary, private_file
from launcher.loadtest.schedule import Threshold
from launcher.loadtest.stats import SUMMARY_PERCENTILES, LatencyHistogram, Recorder, SecondRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ThresholdLine", "error_series", "report_figure", "threshold_lines", "write_report"]

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

# Error codes drawn each in their own colour; the rest are drawn together as "other".
TOP_CODES = 6


@dataclass(frozen=True, slots=True)
class ThresholdLine:
    """A threshold as a horizontal line: on which chart, at what height, over which seconds."""

    chart: str  # "latency" (ms), "rate" (per s) or "error_rate" (%)
    y: float
    start: float  # seconds from the start of the run
    end: float
    label: str


def threshold_lines(
    thresholds: Sequence[Threshold], spans: Sequence[tuple[float, float]], run_end: float
) -> list[ThresholdLine]:
    """The thresholds that have a line on a chart, each over its stage or the whole run.

    Latency and service-time limits go on the latency chart (ms), `rate`
    limits on the rate axis (per second), `error_rate` limits on the error
    chart (%). Counts (`errors<10`) have no per-second line and are not drawn.
    """
    lines: list[ThresholdLine] = []
    for threshold in thresholds:
        if threshold.family in ("latency", "service"):
            chart, y = "latency", threshold.limit
        elif threshold.family == "rate":
            chart, y = "rate", threshold.limit
        elif threshold.family == "error_rate":
            chart, y = "error_rate", threshold.limit * 100.0
        else:
            continue
        start, end = 0.0, run_end
        if threshold.stage is not None and threshold.stage <= len(spans):
            begin, duration = spans[threshold.stage - 1]
            start, end = begin, min(run_end, begin + duration)
        lines.append(ThresholdLine(chart, y, start, max(start, end), threshold.text))
    return lines


def error_series(rows: Sequence[SecondRow], top: int = TOP_CODES) -> dict[str, list[int]]:
    """Errors per second by code: the `top` most frequent codes, the rest under "other"."""
    totals: Counter[str] = Counter()
    for row in rows:
        for code, count in row.error_codes:
            totals[code] += count
    shown = [code for code, _ in totals.most_common(top)]
    series = {code: [0] * len(rows) for code in shown}
    if len(totals) > len(shown):
        series["other"] = [0] * len(rows)
    for index, row in enumerate(rows):
        for code, count in row.error_codes:
            series[code if code in series else "other"][index] += count
    return series


def write_report(
    path: str,
    summary: dict[str, Any],
    rows: Sequence[SecondRow],
    recorder: Recorder,
    thresholds: Sequence[Threshold] = (),
) -> None:
    """Draw the report: a PNG when `path` ends in `.png`, else an HTML page embedding it."""
    figure = report_figure(summary, rows, recorder, thresholds)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    png = buffer.getvalue()
    data = png if path.lower().endswith(".png") else _html(summary, png).encode()
    try:
        with private_file(path, "--report") as out:  # 0600, never through a link
            out.write(data)
    except OSError as error:
        raise UsageError(f"--report {path}: {error.strerror}") from None


def _ms(value: float | None) -> float:
    return float("nan") if value is None else value  # a gap in the line, not a 0 ms


def report_figure(
    summary: dict[str, Any],
    rows: Sequence[SecondRow],
    recorder: Recorder,
    thresholds: Sequence[Threshold] = (),
) -> Figure:
    """The three charts as one matplotlib Figure (axes: latency, rate, errors, error %,
    distribution)."""
    # Imported here: matplotlib takes most of a second to import, and only --report needs it.
    # The object API with an Agg canvas touches no global pyplot state and needs no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    figure = Figure(figsize=(11, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    over_time, errors_axis, distribution = figure.subplots(3, 1, height_ratios=(3, 2, 2))
    run_end = float(rows[-1].second + rows[-1].length) if rows else 0.0
    spans = [(stage.begin, stage.duration) for stage in recorder.stages]
    lines = threshold_lines(thresholds, spans, run_end)

    # Each row is one second: draw steps over it, not lines between its ends.
    seconds = [float(row.second) for row in rows]
    steps = {"drawstyle": "steps-post"}
    padded = list(rows)
    if rows:
        seconds.append(run_end)
        padded.append(rows[-1])
    over_time.plot(
        seconds, [_ms(r.p50_ms) for r in padded], label="latency p50", color="tab:blue", **steps
    )
    over_time.plot(
        seconds, [_ms(r.p99_ms) for r in padded], label="latency p99", color="tab:red", **steps
    )
    over_time.plot(
        seconds,
        [_ms(r.service_p99_ms) for r in padded],
        "--",
        label="service p99",
        color="tab:orange",
        **steps,
    )
    for line in lines:
        if line.chart == "latency":
            over_time.hlines(
                line.y, line.start, line.end, colors="tab:red", linestyles="-.", label=line.label
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
        seconds, [r.rate for r in padded], color="tab:green", alpha=0.5, label="sent/s", **steps
    )
    rate_axis.plot(
        seconds,
        [r.target_rate for r in padded],
        ":",
        color="tab:green",
        label="target/s",
        **steps,
    )
    drops = [(r.second + 0.5, r.dropped) for r in rows if r.dropped]
    if drops:
        rate_axis.bar(
            [s for s, _ in drops],
            [d for _, d in drops],
            width=0.8,
            color="tab:gray",
            alpha=0.5,
            label="dropped",
        )
    rate_lines = [line for line in lines if line.chart == "rate"]
    for line in rate_lines:
        rate_axis.hlines(
            line.y, line.start, line.end, colors="tab:green", linestyles="-.", label=line.label
        )
    rate_axis.set_ylabel("requests per second")
    top = max([r.target_rate for r in rows] + [r.rate for r in rows] + [1.0])
    top = max([top] + [line.y for line in rate_lines])
    rate_axis.set_ylim(0, top * 1.25)  # room above the lines for the legend
    handles, labels = over_time.get_legend_handles_labels()
    more_handles, more_labels = rate_axis.get_legend_handles_labels()
    over_time.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize=8)

    _draw_errors(errors_axis, rows, lines)
    _draw_distribution(distribution, recorder.latency, recorder.service, lines)
    distribution.set_xscale("log")
    ticks = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)
    distribution.xaxis.set_major_locator(FixedLocator([1.0 / (1.0 - q / 100.0) for q in ticks]))
    distribution.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: f"{(1.0 - 1.0 / x) * 100:g}%")
    )
    distribution.xaxis.set_minor_locator(FixedLocator([]))
    return figure


def _draw_errors(axis: Any, rows: Sequence[SecondRow], lines: Sequence[ThresholdLine]) -> None:
    """Errors per second, stacked by code, and the error rate (%) with its thresholds."""
    series = error_series(rows)
    xs = [row.second + 0.5 for row in rows]
    bottom = [0] * len(rows)
    for code, counts in series.items():
        axis.bar(xs, counts, width=0.8, bottom=bottom, label=code)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    axis.set_xlabel("seconds since start")
    axis.set_ylabel("errors per second")
    total = sum(sum(counts) for counts in series.values())
    axis.set_title(f"Errors by code: {total}" if total else "Errors by code: none")
    axis.grid(alpha=0.3)
    percent = axis.twinx()
    percent.plot(
        [float(row.second) for row in rows],
        [row.errors / row.completed * 100.0 if row.completed else float("nan") for row in rows],
        color="black",
        alpha=0.6,
        label="error rate %",
        drawstyle="steps-post",
    )
    for line in lines:
        if line.chart == "error_rate":
            percent.hlines(
                line.y, line.start, line.end, colors="tab:red", linestyles="-.", label=line.label
            )
    percent.set_ylabel("% of answers")
    percent.set_ylim(bottom=0)
    handles, labels = axis.get_legend_handles_labels()
    more_handles, more_labels = percent.get_legend_handles_labels()
    if handles or more_handles:
        axis.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize=8)


def _draw_distribution(
    axis: Any,
    latency: LatencyHistogram,
    service: LatencyHistogram,
    lines: Sequence[ThresholdLine],
) -> None:
    """The HdrHistogram percentile chart: x = 1/(1-q) on a log axis spreads out the tail."""
    for label, histogram, style in (
        ("latency", latency, "-"),
        ("service time", service, "--"),
    ):
        if histogram.count == 0:
            continue
        values = histogram.percentiles_ms(_CHART_PERCENTILES)
        xs = [1.0 / (1.0 - q / 100.0) for q in _CHART_PERCENTILES]
        axis.plot(xs, [values[q] for q in _CHART_PERCENTILES], style, label=label)
    for line in lines:
        if line.chart == "latency":
            axis.axhline(line.y, color="tab:red", linestyle="-.", label=line.label)
    axis.set_xlabel("percentile")
    axis.set_ylabel("ms")
    axis.set_title(
        "Latency distribution (whole run, answers only)"
        if latency.count
        else "Latency distribution: no answers"
    )
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper left", fontsize=8)


def _html(summary: dict[str, Any], png: bytes) -> str:
    names = [name for name, _ in SUMMARY_PERCENTILES] + ["max"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><th>{label}</th>"
        + "".join(
            "<td>-</td>" if summary[key][name] is None else f"<td>{summary[key][name]:.2f}</td>"
            for name in names
        )
        + "</tr>"
        for label, key in (("latency ms", "latency_ms"), ("service time ms", "service_time_ms"))
    )
    thresholds = "".join(
        f"<tr><td><code>{html.escape(t['threshold'])}</code></td>"
        f"<td>{html.escape(t['shown'])}</td>"
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
<img alt="latency over time, errors by code and latency distribution"
 src="data:image/png;base64,{image}"
 style="max-width: 100%">
<h2>Summary</h2><pre>{facts}</pre>
</body></html>
"""
