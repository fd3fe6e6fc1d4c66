"""`launcher loadtest MANIFEST`: the command line of the open-loop load generator.

Thin like the other commands: parse, merge options, call `loadtest.run_loadtest`,
map errors to exit codes (2 bad usage or input, 3 credentials refused, 99 a
threshold breached, 130 interrupted).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import click

from launcher.config import RunOptions, load_config_file, resolve_options
from launcher.errors import EXIT_INTERRUPTED, LauncherError, UsageError
from launcher.flow.pacing import parse_rate
from launcher.flow.policy import parse_duration
from launcher.loadtest.runner import run_loadtest
from launcher.loadtest.schedule import (
    LoadAction,
    LoadSettings,
    Schedule,
    Threshold,
    constant_stages,
    parse_ramp,
    parse_threshold,
)
from launcher.logs import configure_logging

__all__ = ["load_config", "loadtest_command", "loadtest_settings"]

# Keys of the [loadtest] table (also accepted with `-` for `_`).
_TABLE_KEYS = frozenset(
    {
        "rate",
        "duration",
        "ramp",
        "once",
        "max_in_flight",
        "thresholds",
        "abort_on_fail",
        "max_attempts",
        "canary",
        "live",
        "summary_json",
        "timeseries",
        "report",
        "metrics_port",
        "metrics_host",
        "yes",
    }
)
_PATH_KEYS = ("summary_json", "timeseries", "report")
# `run`'s options a load test takes from flags, the file's top level and the environment.
_RUN_FLAGS = (
    "endpoint",
    "region",
    "project_id",
    "workspace",
    "timeout",
    "ca_bundle",
    "iam_endpoint",
    "proxy",
    "action",
    "manifest_format",
    "allow_duplicates",
    "log_format",
    "log_level",
)
DEFAULT_MAX_IN_FLIGHT = 1024


def load_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML config: (`run`'s values as `load_config_file` gives them, the [loadtest] table).

    `[workspaces]` limits pace `run`; a load test follows its own schedule, so
    they are dropped here.
    """
    values = load_config_file(path)
    table = values.pop("loadtest", {})
    values.pop("workspaces", None)
    loadtest: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "threshold":
            name = "thresholds"
        if name not in _TABLE_KEYS:
            raise UsageError(f"{path}: [loadtest]: unknown option {key!r}")
        if name in _PATH_KEYS and isinstance(value, str):
            # Paths in a config file are relative to the file, as `run`'s ledger is.
            value = str(Path(path).parent / value)
        loadtest[name] = value
    return values, loadtest


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
        if flags.get(name) is not None:
            return flags[name], f"--{name.replace('_', '-')}"
        return table.get(name), f"{config_path}: [loadtest] {name}"

    once = bool(_flag(*pick("once")) or False)
    schedule = _schedule(schedule_source, where, once=once)
    thresholds_raw: Any = flags.get("thresholds") or table.get("thresholds") or ()
    if isinstance(thresholds_raw, str):
        thresholds_raw = (thresholds_raw,)
    if not isinstance(thresholds_raw, list | tuple) or not all(
        isinstance(t, str) for t in thresholds_raw
    ):
        raise UsageError(f"{config_path}: [loadtest] thresholds: must be a list of strings")
    thresholds: list[Threshold] = []
    for text in thresholds_raw:
        try:
            thresholds.append(parse_threshold(text, stages=len(schedule.stages)))
        except ValueError as error:
            raise UsageError(f"--threshold: {error}") from None
    max_in_flight = _whole(*pick("max_in_flight"), low=1) or DEFAULT_MAX_IN_FLIGHT
    max_attempts = _whole(*pick("max_attempts"), low=1) or 1
    metrics_port = _whole(*pick("metrics_port"), low=0, high=65535)
    metrics_host, _ = pick("metrics_host")
    canary = _flag(*pick("canary"))
    live = _flag(*pick("live"))
    action: LoadAction = "list" if flags.get("probe") else options.action
    return LoadSettings(
        schedule=schedule,
        action=action,
        once=once,
        max_in_flight=max_in_flight,
        max_attempts=max_attempts,
        thresholds=tuple(thresholds),
        abort_on_fail=bool(_flag(*pick("abort_on_fail")) or False),
        canary=True if canary is None else canary,
        live=True if live is None else live,
        live_json=options.log_format == "json",
        summary_json=_path(*pick("summary_json")),
        timeseries=_path(*pick("timeseries")),
        report=_path(*pick("report")),
        metrics_host=str(metrics_host) if metrics_host else "127.0.0.1",
        metrics_port=metrics_port,
        acknowledged=bool(_flag(*pick("yes")) or False),
    )


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
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of options."
)
@click.option("--endpoint", help="DLF endpoint URL, or `sim` for the embedded simulator.")
@click.option("--region", help="Region id; derives the endpoint (env HUAWEICLOUD_SDK_REGION).")
@click.option("--project-id", help="Default project id (env HUAWEICLOUD_SDK_PROJECT_ID).")
@click.option("--workspace", help="Default workspace for lines that name none.")
@click.option("--timeout", type=float, help="Per-request timeout in seconds [10].")
@click.option(
    "--action",
    type=click.Choice(["start", "stop", "run-immediate", "list"]),
    help="What to do to each job [start]; `list` is read-only: a GET of the job list "
    "filtered by the job's name, to probe the gateway without side effects.",
)
@click.option(
    "--yes",
    is_flag=True,
    default=None,
    help="Acknowledge that start/stop/run-immediate calls have side effects: no warning, "
    "no question.",
)
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False),
    help="CA certificates (PEM) to trust instead of the system store.",
)
@click.option("--proxy", metavar="URL", help="Forward proxy (default: HTTPS_PROXY etc.).")
@click.option("--iam-endpoint", help="IAM endpoint for password login (default from --region).")
@click.option(
    "--format",
    "manifest_format",
    type=click.Choice(["jsonl", "csv", "yaml"]),
    help="Manifest format (default: by file suffix).",
)
@click.option("--allow-duplicates", is_flag=True, default=None, help="Accept the same job twice.")
@click.option(
    "--log-format", type=click.Choice(["auto", "console", "json"]), help="Logs on stderr [auto]."
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]"
)
def loadtest_command(manifest: str, config_path: str | None, **flags: Any) -> None:
    """Load-test the service with MANIFEST's jobs, open loop, at a fixed or ramping rate.

    Requests leave at their scheduled times whatever the answers; latency is
    measured from the scheduled time (corrected for coordinated omission),
    service time from the actual send. Exit 0, or 99 when a --threshold is
    breached, 3 when the credentials are refused, 2 on bad usage or input.

    start, stop and run-immediate act on real jobs: the command warns with the
    number of calls (and asks, at a terminal) unless --yes; --action list
    probes with a read-only GET instead.
    """
    try:
        file_values, table = load_config(config_path) if config_path else ({}, {})
        run_flags = {name: flags.get(name) for name in _RUN_FLAGS}
        probe = run_flags.get("action") == "list"
        if probe:  # not one of `run`'s actions: the load test alone knows it
            run_flags["action"] = None
        options = resolve_options(run_flags, file_values, os.environ, config_path=config_path)
        load_flags = {k: v for k, v in flags.items() if k not in _RUN_FLAGS}
        load_flags["probe"] = probe
        settings = loadtest_settings(load_flags, table, options, config_path=config_path)
        configure_logging(options.log_format, options.log_level)  # type: ignore[arg-type]
        # A question only for a person at a terminal; a script gets the warning alone.
        confirm = None
        if not settings.acknowledged and sys.stdin is not None and sys.stdin.isatty():
            confirm = _ask
        result = anyio.run(
            functools.partial(
                run_loadtest, manifest, options, settings, dict(os.environ), confirm=confirm
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


if __name__ == "__main__":  # `python -m launcher.cli.loadtest` until the command is registered
    loadtest_command(prog_name="launcher loadtest")
