"""`launcher loadtest MANIFEST`: the command line of the open-loop load generator.

Thin like the other commands: parse, merge options, call `loadtest.run_loadtest`,
map errors to exit codes (2 bad usage or input, 3 credentials refused, 98
every request failed, 99 a threshold breached, 130 interrupted).

Options come from flags, then a TOML `--config` file, then the environment.
The file's top-level keys are `launcher run`'s (endpoint, region, project-id,
workspace, timeout, ca-bundle, iam-endpoint, action, `[sim]`, ...); load-test
settings go in its `[loadtest]` table (rate, duration, ramp, max-in-flight,
thresholds, outputs...), so one file can serve both commands without
`run`'s `rate` or `max-attempts` leaking into a load test.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from launcher.cli.options import options_of
from launcher.config import OPTIONS, RunOptions, did_you_mean, load_options, read_config_file
from launcher.errors import EXIT_INTERRUPTED, LauncherError, UsageError, require_extra
from launcher.flow.pacing import parse_rate
from launcher.flow.policy import parse_duration
from launcher.loadtest.runner import run_loadtest
from launcher.loadtest.schedule import (
    LoadSettings,
    Schedule,
    Threshold,
    constant_stages,
    parse_ramp,
    parse_threshold,
)
from launcher.logs import configure_logging
from launcher.manifest import stdin_spooled

__all__ = ["load_config", "loadtest_command", "loadtest_settings"]

_PATH_KEYS = ("summary_json", "timeseries", "report")
# `run`'s options a load test takes from flags, the file's top level and the environment.
_RUN_FLAGS = frozenset(option.name for option in OPTIONS if "loadtest" in option.commands)
DEFAULT_MAX_IN_FLIGHT = 1024
_T = TypeVar("_T")


def load_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML config: (`run`'s values as `load_config_file` gives them, the [loadtest] table).

    Every problem in the file, in either part, is reported at once (UsageError).
    """
    values, problems = read_config_file(path)
    table = _loadtest_table(path, values, problems)
    if problems:
        raise UsageError("\n".join(problems))
    return values, table


def _loadtest_table(path: str, values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Take the [loadtest] table out of a config file's values, its keys checked.

    `[workspaces]` limits pace `run`; a load test follows its own schedule, so
    they are dropped here.
    """
    table = values.pop("loadtest", {})
    values.pop("workspaces", None)
    known = _table_keys()
    loadtest: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "threshold":
            name = "thresholds"
        if name not in known:
            spelled = sorted(known if "_" in key else {k.replace("_", "-") for k in known})
            problems.append(
                f"{path}: [loadtest]: unknown option {key!r}{did_you_mean(key, spelled)}"
            )
            continue
        if name in _PATH_KEYS and isinstance(value, str):
            # Paths in a config file are relative to the file, as `run`'s ledger is.
            value = str(Path(path).parent / value)
        loadtest[name] = value
    return loadtest


def _table_keys() -> frozenset[str]:
    """Keys of the [loadtest] table: the command's own options (not `run`'s)."""
    names = {param.name for param in loadtest_command.params if param.name}
    return frozenset(names - _RUN_FLAGS - {"manifest", "config_path"})


def loadtest_settings(
    flags: Mapping[str, Any],
    table: Mapping[str, Any],
    options: RunOptions,
    *,
    config_path: str | None = None,
) -> LoadSettings:
    """Merge load-test flags over the `[loadtest]` table and check every value (UsageError).

    Any of `--rate`, `--duration`, `--ramp` on the command line replaces the
    table's schedule as a whole; `--threshold` flags replace its thresholds.
    """
    schedule_keys = ("rate", "duration", "ramp")
    if any(flags.get(key) is not None for key in schedule_keys):
        schedule_source: Mapping[str, Any] = flags
        where = "--"
    else:
        schedule_source = table
        where = f"{config_path}: [loadtest] "

    def pick(name: str) -> tuple[Any, str]:
        if flags.get(name) not in (None, ()):  # () is a repeatable flag not given
            flag = "threshold" if name == "thresholds" else name.replace("_", "-")
            return flags[name], f"--{flag}"
        return table.get(name), f"{config_path}: [loadtest] {name}"

    problems: list[str] = []

    def check(convert: Callable[[], _T]) -> _T | None:
        # Every problem is reported, not only the first.
        try:
            return convert()
        except UsageError as error:
            problems.append(str(error))
            return None

    once = bool(check(lambda: _flag(*pick("once"))) or False)
    schedule = check(lambda: _schedule(schedule_source, where, once=once))
    thresholds_raw, source = pick("thresholds")
    if isinstance(thresholds_raw, str):
        thresholds_raw = (thresholds_raw,)
    thresholds: list[Threshold] = []
    if not isinstance(thresholds_raw, list | tuple | None) or not all(
        isinstance(t, str) for t in thresholds_raw or ()
    ):
        problems.append(f"{source}: must be a list of strings")
    else:
        for text in thresholds_raw or ():
            try:
                stages = len(schedule.stages) if schedule is not None else None
                thresholds.append(parse_threshold(text, stages=stages))
            except ValueError as error:
                problems.append(f"{source}: {error}")
    max_in_flight = check(lambda: _whole(*pick("max_in_flight"), low=1))
    max_attempts = check(lambda: _whole(*pick("max_attempts"), low=1))
    metrics_port = check(lambda: _whole(*pick("metrics_port"), low=0, high=65535))
    metrics_host, _ = pick("metrics_host")
    canary = check(lambda: _flag(*pick("canary")))
    live = check(lambda: _flag(*pick("live")))
    abort_on_fail = check(lambda: _flag(*pick("abort_on_fail")))
    summary_json = check(lambda: _path(*pick("summary_json")))
    timeseries = check(lambda: _path(*pick("timeseries")))
    report = check(lambda: _charts(_path(*pick("report"))))
    acknowledged = check(lambda: _flag(*pick("yes")))
    if problems or schedule is None:
        raise UsageError("\n".join(problems))
    return LoadSettings(
        schedule=schedule,
        action="list" if flags.get("probe") else options.action,
        once=once,
        max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT,
        max_attempts=max_attempts or 1,
        thresholds=tuple(thresholds),
        abort_on_fail=bool(abort_on_fail),
        canary=True if canary is None else canary,
        live=True if live is None else live,
        live_json=options.log_format == "json",
        summary_json=summary_json,
        timeseries=timeseries,
        report=report,
        metrics_host=str(metrics_host) if metrics_host else "127.0.0.1",
        metrics_port=metrics_port,
        acknowledged=bool(acknowledged),
    )


def _charts(report: str | None) -> str | None:
    """`--report` draws with matplotlib: the `loadtest` extra (checked before anything runs)."""
    if report is not None:
        require_extra("matplotlib", "loadtest", "--report (load-test charts)")
    return report


def _schedule(source: Mapping[str, Any], where: str, *, once: bool) -> Schedule:
    rate, duration, ramp = source.get("rate"), source.get("duration"), source.get("ramp")
    try:
        if ramp is not None:
            if rate is not None or duration is not None:
                raise UsageError(
                    f"{where}ramp: give either --ramp STAGES or --rate R --duration D, not both "
                    "(each stage carries its own duration)"
                )
            return Schedule(parse_ramp(str(ramp)))
        if rate is None:
            raise UsageError(
                "no load: give --rate R --duration D (e.g. --rate 500/s --duration 10s), "
                "or --ramp STAGES (e.g. 0/s->500/s:30s,500/s:60s)"
            )
        per_second = parse_rate(str(rate))
        seconds = None
        if duration is not None:
            seconds = (
                float(duration)
                if isinstance(duration, int | float) and not isinstance(duration, bool)
                else parse_duration(str(duration))
            )
        elif not once:
            raise UsageError(
                f"{where}rate: --rate needs --duration D (e.g. 10s, 2m), "
                "or --once to send each job of the manifest once"
            )
        return Schedule(constant_stages(per_second, seconds))
    except ValueError as error:
        raise UsageError(f"{where}{_which(rate, ramp)}: {error}") from None


def _which(rate: object, ramp: object) -> str:
    return "ramp" if ramp is not None else "rate" if rate is not None else "duration"


def _whole(value: object, source: str, *, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"{source}: must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{source}: must be a whole number") from None
    if number < low or (high is not None and number > high):
        upper = f" and at most {high}" if high is not None else ""
        raise UsageError(f"{source}: must be at least {low}{upper}")
    return number


def _flag(value: object, source: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise UsageError(f"{source}: must be true or false")


def _path(value: object, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{source}: must be a file path")
    return value


@click.command("loadtest")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--rate", help="Requests per second, open loop: 500/s, 120/m.")
@click.option("--duration", help="How long to send at --rate: 10s, 2m, 1h30m.")
@click.option(
    "--ramp",
    help="Stages instead of --rate/--duration: 0/s->500/s:30s,500/s:60s (FROM->TO:D or R:D).",
)
@click.option(
    "--once", is_flag=True, default=None, help="Use each manifest job once (default: cycle)."
)
@click.option(
    "--max-in-flight",
    type=int,
    help=f"Most requests out at once; a slot beyond it is dropped and counted "
    f"[{DEFAULT_MAX_IN_FLIGHT}].",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    help="Pass/fail rule, repeatable: p99<500ms, service_p95<200ms, max<2s, error_rate<1%, "
    "rate>=490/s, dropped<1. A breach exits 99.",
)
@click.option(
    "--abort-on-fail",
    is_flag=True,
    default=None,
    help="Stop as soon as a threshold is breached (judged each second).",
)
@click.option("--max-attempts", type=int, help="Attempts per request, the first included [1].")
@click.option("--no-canary", "canary", flag_value=False, default=None, help="No warm-up request.")
@click.option("--live/--no-live", default=None, help="Live view on stderr, once a second [on].")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@click.option("--timeseries", type=click.Path(dir_okay=False), help="Per-second CSV.")
@click.option(
    "--report", type=click.Path(dir_okay=False), help="Charts: an .html page or a .png image."
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", help="Address for --metrics-port [127.0.0.1].")
@click.option(
    "--yes",
    is_flag=True,
    default=None,
    help="Acknowledge that start/stop/run-immediate calls have side effects: no warning, "
    "no question.",
)
@options_of("loadtest")
def loadtest_command(manifest: str, config_path: str | None, **flags: Any) -> None:
    """Load-test the service with MANIFEST's jobs, open loop, at a fixed or ramping rate.

    Requests leave at their scheduled times whatever the answers; latency is
    measured from the scheduled time (corrected for coordinated omission),
    service time from the actual send. Exit 0, or 99 when a --threshold is
    breached, 98 when every request failed (thresholds or not), 3 when the
    credentials are refused, 2 on bad usage or input.

    start, stop and run-immediate act on real jobs: the command warns with the
    number of calls (and asks, at a terminal) unless --yes; --action list
    probes with a read-only GET instead.
    """
    try:
        table: dict[str, Any] = {}

        def take_table(values: dict[str, Any], problems: list[str]) -> None:
            table.update(_loadtest_table(str(config_path), values, problems))

        run_flags = {name: flags.get(name) for name in _RUN_FLAGS}
        probe = run_flags.get("action") == "list"
        if probe:  # not one of `run`'s actions: the load test alone knows it
            run_flags["action"] = None
        load_flags = {k: v for k, v in flags.items() if k not in _RUN_FLAGS}
        load_flags["probe"] = probe
        problems: list[str] = []
        try:
            options, _ = load_options(run_flags, config_path, os.environ, more=take_table)
        except UsageError as error:
            # The load test's own settings are checked too: every problem at once.
            problems.append(str(error))
            options = RunOptions()
        try:
            settings = loadtest_settings(load_flags, table, options, config_path=config_path)
        except UsageError as error:
            problems.append(str(error))
        if problems:
            raise UsageError("\n".join(problems))
        configure_logging(options.log_format, options.log_level)
        # A question only for a person at a terminal; a script gets the warning alone.
        confirm = None
        if not settings.acknowledged and sys.stdin is not None and sys.stdin.isatty():
            confirm = _ask
        with stdin_spooled(manifest) as path:  # `-`: stdin, read whole before it is checked
            result = anyio.run(
                functools.partial(
                    run_loadtest, path, options, settings, dict(os.environ), confirm=confirm
                )
            )
    except LauncherError as error:
        click.echo(f"launcher: error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        # Only before the load test's own signal handling is in place (connecting, canary).
        click.echo("launcher: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result.exit_code)


def _ask(question: str) -> bool:
    return click.confirm(question, default=False, err=True)


def _with_list_action(command: click.Command) -> click.Command:
    """`--action` of a load test also takes `list`: a read-only probe `run` does not have."""
    for param in command.params:
        if param.name == "action" and isinstance(param.type, click.Choice):
            param.type = click.Choice([*param.type.choices, "list"])
            if isinstance(param, click.Option):
                param.help = (
                    "What to do to each job [start]; `list` is read-only: a GET of the job "
                    "list filtered by the job's name, to probe the gateway without side effects."
                )
    return command


_with_list_action(loadtest_command)

if __name__ == "__main__":  # `python -m launcher.cli.loadtest` until the command is registered
    loadtest_command(prog_name="launcher loadtest")
