"""The command line: `launcher run | validate | report | sim`.

Thin by design: parse, merge options (flag > config file > environment),
call into `runner`, map errors to the exit codes of interface.md.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import click
import orjson

from launcher import __version__
from launcher.config import load_config_file, resolve_options
from launcher.errors import LauncherError, UsageError
from launcher.ledger.report import format_text
from launcher.logs import configure_logging
from launcher.manifest.validate import Defaults, validate

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


def _run_options(func: F) -> F:
    """The options shared by `run` (and later `replay`); every one may also come from --config."""
    decorators = [
        click.option(
            "--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of options."
        ),
        click.option("--endpoint", help="DLF endpoint URL, or `sim` for the embedded simulator."),
        click.option(
            "--region", help="Region id; derives the endpoint (env HUAWEICLOUD_SDK_REGION)."
        ),
        click.option("--project-id", help="Default project id (env HUAWEICLOUD_SDK_PROJECT_ID)."),
        click.option("--workspace", help="Default workspace for lines that name none."),
        click.option("--ledger", help="Ledger path (default ledgers/<manifest>-<UTC time>.jsonl)."),
        click.option(
            "--resume",
            is_flag=True,
            default=None,
            help="Continue the run recorded in --ledger: settled jobs are skipped, "
            "jobs in doubt are checked with the service before any resend.",
        ),
        click.option(
            "--force", is_flag=True, default=None, help="Resume even if the manifest changed."
        ),
        click.option(
            "--retry-failed",
            is_flag=True,
            default=None,
            help="On --resume, send permanent failures (DLF.* errors) again too.",
        ),
        click.option(
            "--shard",
            metavar="I/N",
            help="Take the I-th of N disjoint parts of the manifest (0-based, by job identity).",
        ),
        click.option("--concurrency", type=int, help="Most requests in flight at once [64]."),
        click.option(
            "--per-workspace", type=int, help="Most requests in flight per workspace [no limit]."
        ),
        click.option(
            "--rate", help="Most requests started per second: 30/s, 120/m, 0 = unlimited [30/s]."
        ),
        click.option(
            "--burst", type=int, help="Requests that may go back to back after idling [1]."
        ),
        click.option("--max-attempts", type=int, help="Attempts per job, the first included [5]."),
        click.option("--timeout", type=float, help="Per-request timeout in seconds [10]."),
        click.option(
            "--action",
            type=click.Choice(["start", "stop", "run-immediate"]),
            help="What to do to each job [start].",
        ),
        click.option(
            "--allow-duplicates", is_flag=True, default=None, help="Accept the same job twice."
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            default=None,
            help="Validate and print the plan; send nothing.",
        ),
        click.option(
            "--no-canary",
            "canary",
            flag_value=False,
            default=None,
            help="Do not send the first request alone.",
        ),
        click.option(
            "--adaptive/--no-adaptive",
            default=None,
            help="Slow down on 429s and recover along a CUBIC curve [on].",
        ),
        click.option("--backoff-base", type=float, help="First retry waits up to this [0.1 s]."),
        click.option("--backoff-cap", type=float, help="No retry waits longer [20 s]."),
        click.option(
            "--retry-budget",
            type=int,
            help="Run-wide retry tokens (a retry costs 5, a success refunds 1); 0 = off [500].",
        ),
        click.option("--halt", help="Stop dispatching when failures cross fail=N or fail=P%."),
        click.option("--deadline", help="Bound the whole run (30m, 90s); unsent jobs end pending."),
        click.option(
            "--ca-bundle",
            type=click.Path(dir_okay=False),
            help="CA certificates (PEM) to trust instead of the system store.",
        ),
        click.option(
            "--proxy",
            metavar="URL",
            help="Forward proxy for every call, IAM too (default: HTTPS_PROXY, HTTP_PROXY, "
            "NO_PROXY; '' for none).",
        ),
        click.option(
            "--iam-endpoint", help="IAM endpoint for password login (default from --region)."
        ),
        click.option(
            "--fsync",
            type=click.Choice(["always", "batch", "never"]),
            help="Ledger durability [batch].",
        ),
        click.option(
            "--format",
            "manifest_format",
            type=click.Choice(["jsonl", "csv", "yaml"]),
            help="Manifest format (default: by file suffix).",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["auto", "console", "json"]),
            help="Logs on stderr [auto].",
        ),
        click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]"
        ),
        click.option(
            "--progress",
            type=click.Choice(["auto", "bar", "lines", "off"]),
            help="Progress display [auto].",
        ),
        click.option(
            "--redis",
            help="Share the rate limit with every launcher on the same --limit-key through "
            "this Redis (redis://[:PASSWORD@]HOST:PORT/DB; env LAUNCHER_REDIS_URL).",
        ),
        click.option(
            "--limit-key",
            help="Redis key of the shared limit [from the endpoint host and the AK].",
        ),
        click.option(
            "--redis-optional",
            is_flag=True,
            default=None,
            help="If Redis is unreachable at start, warn and apply local limits (else exit 2).",
        ),
        click.option(
            "--shared-concurrency",
            type=int,
            help="Most requests in flight across every launcher on the key; 0 = off [0].",
        ),
        click.option(
            "--metrics-port",
            type=int,
            help="Serve Prometheus metrics of the run (jobs by outcome, attempts, in flight, "
            "failures by code) on this port.",
        ),
        click.option("--metrics-host", help="Address for --metrics-port [127.0.0.1]."),
        click.option(
            "--workers",
            metavar="N|auto",
            help="Dispatch processes: auto uses every core at --rate 0 or a rate one "
            "process cannot reach, and one process otherwise [auto].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _fail(error: LauncherError) -> None:
    click.echo(f"launcher: error: {error}", err=True)
    sys.exit(error.exit_code)


class _LazyGroup(click.Group):
    """Imports `sim` and `loadtest` only when they run: the simulator and the load
    test's statistics cost ~0.25 s of imports that `run` (and each of its worker
    processes) would otherwise pay at every start."""

    _LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "loadtest": ("launcher.cli.loadtest", "loadtest_command"),
        "sim": ("launcher.cli.sim", "sim_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LAZY:
            module, name = self._LAZY[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="launcher")
def cli() -> None:
    """Launch DataArts Factory (DLF) jobs in bulk: fast, paced, recorded, resumable."""


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@_run_options
def run(manifest: str, config_path: str | None, **flags: Any) -> None:
    """Launch every job in MANIFEST."""
    from launcher.run.runner import launch

    try:
        file_values = load_config_file(config_path) if config_path else {}
        options = resolve_options(flags, file_values, os.environ, config_path=config_path)
        configure_logging(options.log_format, options.log_level)  # type: ignore[arg-type]
        result = launch(manifest, options, dict(os.environ))
    except LauncherError as error:
        _fail(error)
        return
    sys.exit(result.exit_code)


@cli.command("validate")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--project-id", help="Default project id applied before the duplicate check.")
@click.option("--workspace", help="Default workspace applied before the duplicate check.")
@click.option("--allow-duplicates", is_flag=True, help="Accept the same job twice.")
@click.option("--format", "manifest_format", type=click.Choice(["jsonl", "csv", "yaml"]))
def validate_command(
    manifest: str,
    project_id: str | None,
    workspace: str | None,
    allow_duplicates: bool,
    manifest_format: str | None,
) -> None:
    """Check MANIFEST exactly as `run` would, and send nothing."""
    try:
        project = project_id or os.environ.get("HUAWEICLOUD_SDK_PROJECT_ID") or None
        result = validate(
            manifest,
            Defaults(project_id=project, workspace=workspace),
            allow_duplicates=allow_duplicates,
            fmt=manifest_format,
        )
        result.raise_if_invalid()
    except LauncherError as error:
        _fail(error)
        return
    click.echo(f"{manifest}: {result.jobs} job(s), valid (sha256 {result.sha256[:16]}…)")


@cli.command()
@click.argument("ledgers", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
    help="csv: one row per job.",
)
@click.option(
    "--outcome",
    help="Only jobs with these final outcomes (started,failed,unknown,pending): "
    "listed after the summary, or the only CSV rows.",
)
@click.option(
    "--merge-runs",
    is_flag=True,
    help="Count ledgers of different runs as one (default: segments and shards of one run "
    "merge; different runs are reported side by side).",
)
def report(ledgers: tuple[str, ...], fmt: str, outcome: str | None, merge_runs: bool) -> None:
    """Summarize one or more LEDGERS: one final outcome per job.

    Segments (resumes) and shards of one run merge; ledgers of different runs
    are reported side by side (CSV refuses them) unless --merge-runs. Works on
    a ledger a running launcher is still writing, and says so.

    Exit status: 0 when every job started; 1 when any job failed, is unknown
    or pending (never sent); 2 when a file is not a ledger or bad usage.
    """
    from launcher.ledger.report import (
        exit_status,
        format_rows,
        job_rows,
        pending_rows,
        to_json,
        write_csv,
    )
    from launcher.run.replay import parse_only
    from launcher.run.reports import describe_runs, read_runs

    try:
        outcomes = parse_only(outcome) if outcome else None
        per_job = fmt == "csv" or outcomes is not None
        runs = read_runs(ledgers, merge_runs=merge_runs, per_job=per_job)
        if len(runs) > 1 and fmt == "csv":
            raise UsageError(
                f"these ledgers are {len(runs)} different runs: "
                + "; ".join(describe_runs(runs))
                + ". Report each run on its own, or pass --merge-runs to count them as one"
            )
    except LauncherError as error:
        _fail(error)
        return
    status = max(exit_status(run.summary) for run in runs)

    def rows(index: int) -> list[dict[str, Any]]:
        run = runs[index]
        found = list(job_rows(run.history, outcomes))
        if run.unsent is not None and (outcomes is None or "pending" in outcomes):
            found.extend(pending_rows(run.unsent.jobs))
        return found

    if fmt == "csv":
        write_csv(rows(0), sys.stdout)
        sys.exit(status)
    documents = []
    for index, run in enumerate(runs):
        document = to_json(run.summary)
        if outcomes is not None:
            document["jobs_list"] = rows(index)
        documents.append(document)
    if fmt == "json":
        shown = documents[0] if len(runs) == 1 else {"runs": documents}
        click.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        sys.exit(status)
    names = describe_runs(runs)
    for index, run in enumerate(runs):
        if len(runs) > 1:
            click.echo(
                ("\n" if index else "") + f"== run {index + 1} of {len(runs)}: {names[index]}"
            )
        click.echo(format_text(run.summary))
        if outcomes is not None:
            listing = format_rows(rows(index))
            click.echo("\n" + (listing or f"(no {','.join(sorted(outcomes))} jobs)"))
    if len(runs) > 1:
        click.echo(
            f"\n{len(runs)} different runs, reported side by side; --merge-runs counts them as one"
        )
    sys.exit(status)


@cli.command()
@click.argument("source", metavar="LEDGER", type=click.Path(dir_okay=False))
@_run_options
@click.option(
    "--only",
    help="Replay only jobs with these final outcomes: started,failed,unknown,pending [all].",
)
@click.option(
    "--map-workspace",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename a workspace (repeatable). --project-id replaces every job's project.",
)
def replay(
    source: str,
    config_path: str | None,
    only: str | None,
    map_workspace: tuple[str, ...],
    **flags: Any,
) -> None:
    """Re-issue the jobs recorded in LEDGER as a new run, into another project,
    workspace or region (--endpoint/--region), with its own ledger."""
    from dataclasses import replace

    from launcher.run.replay import parse_only, parse_workspace_map, plan_replay
    from launcher.run.runner import launch

    try:
        file_values = load_config_file(config_path) if config_path else {}
        options = resolve_options(flags, file_values, os.environ, config_path=config_path)
        configure_logging(options.log_format, options.log_level)  # type: ignore[arg-type]
        if options.resume:
            raise UsageError(
                "replay --resume: resume a replay with `launcher run REPLAY.manifest.jsonl "
                "--ledger REPLAY.jsonl --resume`"
            )
        plan = plan_replay(
            source,
            only=parse_only(only),
            project_id=flags.get("project_id") or file_values.get("project_id"),
            workspace_map=parse_workspace_map(map_workspace),
            ledger=options.ledger,
        )
        click.echo(f"replay: {plan.jobs} job(s) from {source} -> {plan.manifest}", err=True)
        options = replace(options, ledger=str(plan.ledger))
        result = launch(str(plan.manifest), options, dict(os.environ))
    except LauncherError as error:
        _fail(error)
        return
    sys.exit(result.exit_code)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="launcher")
