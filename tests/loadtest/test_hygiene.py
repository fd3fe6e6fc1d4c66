"""Load-test hygiene (issue 16.7) and latency truth (16.6).

Side effects are announced with their count (and asked about at a terminal);
`--action list` probes read-only; thresholds print in the unit they were
written in and may judge one stage of a ramp; charts draw errors by code and
thresholds; latency is over answers only. Pure parts are table tests; the
command runs in a subprocess against the simulator, on real sockets.
"""

from __future__ import annotations

import math
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from launch_helpers import Completed, job_lines, sim_env, write_manifest

from launcher.loadtest.charts import error_series, report_figure, threshold_lines
from launcher.loadtest.output import build_summary, format_summary, quantile_label
from launcher.loadtest.schedule import (
    LoadSettings,
    Schedule,
    constant_stages,
    measure,
    parse_ramp,
    parse_threshold,
    planned_calls,
    side_effect_warning,
)
from launcher.loadtest.stats import Recorder
from launcher.simulator.app import running


async def loadtest(*args: str) -> Completed:
    result = await anyio.run_process(
        [sys.executable, "-m", "launcher", "loadtest", *args],
        env=sim_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Completed(result.returncode, result.stdout.decode(), result.stderr.decode())


def _summary(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


# --- thresholds in their own unit, per stage ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [
        ("error_rate<1%", 0.00257333, "0.26%"),
        ("error_rate<0.01", 0.00257333, "0.002573"),
        ("drop_rate<=5%", 0.0, "0.00%"),
        ("p99<500ms", 123.456, "123.46 ms"),
        ("max<2s", 1234.5, "1.234 s"),
        ("service_p95<1m", 90000.0, "1.5 m"),
        ("rate>=490/s", 489.94, "489.9/s"),
        ("rate>=120/m", 2.0, "120.0/m"),
        ("rate@stage2>=290/s", 291.04, "291.0/s"),
        ("dropped<1", 3.0, "3"),
        ("p99<500ms", None, "no data"),
    ],
)
def test_thresholds_show_values_in_the_unit_they_were_written_in(
    text: str, value: float | None, shown: str
) -> None:
    assert parse_threshold(text).show(value) == shown


@given(st.integers(0, 10_000), st.sampled_from(["<", "<=", ">", ">="]), st.integers(1, 9))
def test_a_percentage_threshold_shows_its_value_as_a_percentage(
    hundredths: int, op: str, stage: int
) -> None:
    percent = hundredths / 100.0
    threshold = parse_threshold(f"error_rate@stage{stage}{op}{percent}%", stages=9)
    assert (threshold.stage, threshold.op, threshold.unit) == (stage, op, "%")
    assert threshold.limit == pytest.approx(percent / 100.0)
    assert threshold.show(threshold.limit) == f"{percent:.2f}%"


@given(st.integers(1, 100_000), st.sampled_from(["ms", "s", "m"]))
def test_a_latency_threshold_shows_its_limit_in_its_own_unit(amount: int, unit: str) -> None:
    threshold = parse_threshold(f"p99<{amount}{unit}")
    assert threshold.unit == unit
    shown = threshold.show(threshold.limit)
    assert shown.endswith(f" {unit}")
    assert float(shown.split()[0]) == pytest.approx(amount, rel=1e-3)


def test_stage_thresholds_parse_and_name_a_stage_that_exists() -> None:
    threshold = parse_threshold("rate@stage2>=290/s", stages=3)
    assert (threshold.family, threshold.stage, threshold.limit) == ("rate", 2, 290.0)
    assert not threshold.live  # judged when the stage is over: at the end
    assert parse_threshold("p99@stage1<300ms").stage == 1
    with pytest.raises(ValueError, match="the schedule has 2 stages, so there is no stage 3"):
        parse_threshold("rate@stage3>=1/s", stages=2)
    with pytest.raises(ValueError, match="@stage1, @stage2"):
        parse_threshold("rate@warmup>=1/s")
    with pytest.raises(ValueError, match="@stage1"):
        parse_threshold("rate@stage0>=1/s")


def test_a_stage_threshold_judges_its_stage_not_the_run_average() -> None:
    """50/s for 2 s then 150/s for 2 s: the run averages 100/s; stage 2 ran at 150/s."""
    schedule = Schedule(parse_ramp("50/s:2s,150/s:2s"))
    recorder = Recorder(0.0, stages=schedule.spans(), stage_latency=True)
    for k in range(int(schedule.requests)):
        due = schedule.time_of(k)
        assert due is not None
        stage = 0 if due < 2.0 else 1
        recorder.slot(due, due, sent=True, stage=stage)
        answer = 0.010 if stage == 0 else 0.300  # stage 2 is slow
        recorder.done(measure(due, due + answer, answer), "429" if stage else None, stage=stage)
    value = recorder.value_for
    assert value(parse_threshold("rate>=140/s"), elapsed=4.0) == pytest.approx(100.0)
    assert value(parse_threshold("rate@stage2>=140/s"), elapsed=4.0) == pytest.approx(150.0)
    assert value(parse_threshold("rate@stage1<=60/s"), elapsed=4.0) == pytest.approx(50.0)
    assert value(parse_threshold("p99@stage1<50ms"), elapsed=4.0) == pytest.approx(10.0, 0.01)
    assert value(parse_threshold("p50@stage2<50ms"), elapsed=4.0) == pytest.approx(300.0, 0.01)
    assert value(parse_threshold("error_rate@stage1<1%"), elapsed=4.0) == 0.0
    assert value(parse_threshold("error_rate@stage2<1%"), elapsed=4.0) == 1.0
    # Stopped 1 s into stage 2: its rate is over the second it ran, not its two.
    assert value(parse_threshold("rate@stage2>=1/s"), elapsed=3.0) == pytest.approx(300.0)


# --- latency over answers only ------------------------------------------------------------


def test_requests_without_an_answer_are_counted_but_not_measured() -> None:
    recorder = Recorder(0.0)
    for k in range(3):
        recorder.slot(k * 0.1, k * 0.1, sent=True)
        recorder.done(measure(k * 0.1, 5.0, 5.0), "connect", answered=False)
    row = recorder.close_second(1.0, target_rate=3.0, cpu_pct=1.0)
    assert (row.completed, row.errors) == (3, 3)
    assert row.p50_ms is None
    assert row.p99_ms is None
    assert recorder.answered == 0
    settings = LoadSettings(schedule=Schedule(constant_stages(3.0, 1.0)))
    summary = build_summary(
        recorder, settings, [], window=1.0, elapsed=1.0, target_requests=3, busy_seconds=0,
        cpu_pct=1.0, stop_reason="complete", exit_code=0, endpoint="x", started_at="t",
    )  # fmt: skip
    assert summary["answers"] == 0
    assert set(summary["latency_ms"].values()) == {None}
    text = format_summary(summary)
    assert "latency         no answers" in text
    assert "latency ms" not in text  # no row of 0.00 ms
    # One answer among the failures: the percentiles are that answer's, not the timeouts'.
    recorder.slot(0.5, 0.5, sent=True)
    recorder.done(measure(0.5, 0.52, 0.02), None)
    assert recorder.latency.summary_ms()["max"] == pytest.approx(20.0, rel=0.01)


def test_prometheus_labels_are_clean() -> None:
    assert [quantile_label(q) for q in (50.0, 90.0, 99.0, 99.9, 99.99)] == [
        "0.5",
        "0.9",
        "0.99",
        "0.999",
        "0.9999",
    ]


def test_histogram_buckets_are_cumulative() -> None:
    recorder = Recorder(0.0)
    for seconds in (0.002, 0.004, 0.020, 0.3, 7.0):
        recorder.slot(0.0, 0.0, sent=True)
        recorder.done(measure(0.0, seconds, seconds), None)
    assert recorder.latency.buckets((0.001, 0.005, 0.025, 0.5, 10.0)) == [0, 2, 3, 4, 5]
    assert recorder.latency.sum_s() == pytest.approx(7.326, rel=0.01)


# --- side effects -------------------------------------------------------------------------


def test_the_warning_counts_the_calls_about_to_be_made() -> None:
    settings = LoadSettings(schedule=Schedule(constant_stages(500.0, 10.0)))
    assert planned_calls(settings, jobs=20) == 5000
    warning = side_effect_warning(settings, 20, "https://dlf.example")
    assert warning is not None
    assert "sends 5,001 start calls (5,000 + 1 canary) to https://dlf.example" in warning
    assert "--action list" in warning
    assert "--yes" in warning
    once = LoadSettings(schedule=Schedule(constant_stages(500.0, None)), once=True, canary=False)
    assert "sends 40 start calls," in (side_effect_warning(once, 40, "") or "")
    retried = LoadSettings(schedule=Schedule(constant_stages(10.0, 1.0)), max_attempts=3)
    assert "up to 33 start calls (11 x 3 attempts)" in (side_effect_warning(retried, 5, "") or "")
    probe = LoadSettings(schedule=Schedule(constant_stages(500.0, 10.0)), action="list")
    assert side_effect_warning(probe, 20, "x") is None


@pytest.mark.anyio
async def test_start_warns_with_the_count_and_yes_silences_it(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    async with running() as (sim, url):
        warned = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--duration", "0.5s", "--no-live",
        )  # fmt: skip
        quiet = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--duration", "0.5s", "--no-live", "--yes",
        )  # fmt: skip
    assert warned.code == 0, warned.stderr
    assert quiet.code == 0, quiet.stderr
    assert "warning: this load test sends 51 start calls (50 + 1 canary)" in warned.stderr
    assert "warning" not in quiet.stderr
    assert sim.stats.by_route["start"] == 2 * 51


@pytest.mark.anyio
async def test_a_person_at_a_terminal_is_asked_and_no_sends_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    primary, secondary = pty.openpty()
    try:
        os.write(primary, b"n\n")
        async with running() as (sim, url):
            result = await anyio.run_process(
                [sys.executable, "-m", "launcher", "loadtest", str(manifest), "--endpoint", url,
                 "--project-id", "p1", "--rate", "100/s", "--duration", "1s"],
                env=sim_env(), check=False, stdin=secondary,
            )  # fmt: skip
    finally:
        os.close(primary)
        os.close(secondary)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Send them?" in stderr
    assert "not confirmed: nothing was sent" in stderr
    assert sim.stats.requests == 0


@pytest.mark.anyio
async def test_action_list_probes_read_only(tmp_path: Path) -> None:
    # A line's own action is not followed in a probe: nothing may start.
    manifest = write_manifest(
        tmp_path / "m.jsonl", [*job_lines(3, workspace="ws-1"), {"name": "x", "action": "start"}]
    )
    summary_path = tmp_path / "s.json"
    async with running() as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--action", "list",
            "--rate", "100/s", "--duration", "0.5s", "--no-live",
            "--summary-json", str(summary_path),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert "warning" not in done.stderr
    summary = _summary(summary_path)
    assert summary["action"] == "list"
    assert summary["requests"] == 50
    assert summary["errors"] == {}
    assert sim.stats.by_route["jobs"] == 50 + 1  # and the canary
    assert sum(sim.stats.by_route[a] for a in ("start", "stop", "run-immediate")) == 0


# --- ramps judged per stage, end to end ---------------------------------------------------


@pytest.mark.anyio
async def test_a_ramps_rate_is_judged_per_stage(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    summary_path = tmp_path / "s.json"
    async with running() as (_sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--yes", "--no-live",
            "--ramp", "40/s:1s,160/s:1s", "--threshold", "rate@stage2>=150/s",
            "--threshold", "rate@stage1<=45/s", "--threshold", "rate>=150/s",
            "--threshold", "error_rate<1%", "--summary-json", str(summary_path),
        )  # fmt: skip
    assert done.code == 99, done.stderr  # the whole-run rate (100/s) fails; the stages pass
    summary = _summary(summary_path)
    verdicts = {t["threshold"]: t["pass"] for t in summary["thresholds"]}
    assert verdicts == {
        "rate@stage2>=150/s": True,
        "rate@stage1<=45/s": True,
        "rate>=150/s": False,
        "error_rate<1%": True,
    }
    assert [s["sent"] for s in summary["stages"]] == [40, 160]
    assert "error_rate<1%            pass  (0.00%)" in done.stdout
    assert "value 0" not in done.stdout


@pytest.mark.anyio
async def test_a_stage_past_the_ramps_end_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(1))
    async with running() as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--ramp", "10/s:1s",
            "--threshold", "rate@stage2>=1/s",
        )  # fmt: skip
    assert done.code == 2
    assert "the schedule has 1 stage, so there is no stage 2" in done.stderr
    assert sim.stats.requests == 0


@pytest.mark.anyio
async def test_nothing_answered_reads_no_answers_not_zero_ms(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(2))
    summary_path = tmp_path / "s.json"
    with socket.socket() as probe:  # a port with nobody listening: every connect is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = await loadtest(
        str(manifest), "--endpoint", f"http://127.0.0.1:{port}", "--project-id", "p1",
        "--rate", "20/s", "--duration", "0.5s", "--no-canary", "--yes",
        "--summary-json", str(summary_path),
    )  # fmt: skip
    summary = _summary(summary_path)
    assert summary["requests"] == 10
    assert summary["answers"] == 0
    assert summary["errors"] == {"connect": 10}
    assert summary["latency_ms"]["p50"] is None
    assert "no answers" in done.stdout
    assert "p50     0.00 ms" not in done.stderr


# --- charts -------------------------------------------------------------------------------


def _recorded_run() -> tuple[Recorder, list[Any]]:
    schedule = Schedule(parse_ramp("40/s:2s,60/s:2s"))
    recorder = Recorder(0.0, stages=schedule.spans())
    rows = []
    for second in range(4):
        rate = 40 if second < 2 else 60
        for k in range(rate):
            due = second + k / rate
            recorder.slot(due, due, sent=True, stage=second // 2)
            code = "429" if second == 3 and k % 3 == 0 else "DLF.0100" if k == 1 else None
            recorder.done(measure(due, due + 0.02, 0.02), code, stage=second // 2)
        rows.append(recorder.close_second(second + 1.0, target_rate=rate, cpu_pct=1.0))
    return recorder, rows


def test_errors_by_code_per_second() -> None:
    _recorder, rows = _recorded_run()
    series = error_series(rows)
    assert series == {"429": [0, 0, 0, 20], "DLF.0100": [1, 1, 1, 1]}
    assert error_series(rows, top=1) == {"429": [0, 0, 0, 20], "other": [1, 1, 1, 1]}


def test_thresholds_become_lines_over_their_stage() -> None:
    thresholds = [
        parse_threshold(t) for t in ("p99<250ms", "rate@stage2>=55/s", "error_rate<5%", "errors<10")
    ]
    lines = threshold_lines(thresholds, [(0.0, 2.0), (2.0, 2.0)], run_end=4.0)
    assert [(line.chart, line.y, line.start, line.end) for line in lines] == [
        ("latency", 250.0, 0.0, 4.0),
        ("rate", 55.0, 2.0, 4.0),
        ("error_rate", 5.0, 0.0, 4.0),
    ]


def test_the_report_draws_error_codes_and_threshold_lines() -> None:
    recorder, rows = _recorded_run()
    thresholds = [parse_threshold(t) for t in ("p99<250ms", "rate@stage2>=55/s", "error_rate<5%")]
    summary = {"requests": recorder.completed, "achieved_rate": 50.0, "target_rate": 50.0}
    figure = report_figure(summary, rows, recorder, thresholds)
    labels = {
        text.get_text()
        for axis in figure.axes
        if axis.get_legend() is not None
        for text in axis.get_legend().get_texts()
    }
    assert {"429", "DLF.0100", "p99<250ms", "rate@stage2>=55/s", "error_rate<5%"} <= labels
    assert {"latency p99", "sent/s", "target/s", "error rate %"} <= labels
    assert math.isclose(figure.axes[0].get_ylim()[0], 0.0)
