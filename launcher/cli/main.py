"""The command line: `launcher run | validate | report | replay` (`loadtest`, `sim` lazily).

Thin by design: parse, merge options (flag > config file > environment),
call into `runner`, map errors to the exit codes of interface.md. The run
options are generated from `launcher.config.OPTIONS` (see `launcher.cli.options`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, ClassVar

import click
import orjson

from launcher import __version__
from launcher.cli.options import options_of
from launcher.config import load_config_file, load_options, resolve_options
from launcher.errors import EXIT_INTERRUPTED, HaltError, LauncherError, UsageError
from launcher.ledger.report import format_text
from launcher.logs import configure_logging
from launcher.manifest.lines import stdin_spooled

__all__ = ["cli", "main"]


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

    def invoke(self, ctx: click.Context) -> Any:
        # Ctrl-C outside a run's own signal handling (reading or validating the
        # manifest, folding a ledger, a report): click would say "Aborted!" and
        # exit 1; every command exits 130, as `run` does when interrupted.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("launcher: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="launcher")
def cli() -> None:
    """Launch DataArts Factory (DLF) jobs in bulk: fast, paced, recorded, resumable."""


# `run --help` ends with the exit codes (from the errors that carry them) and examples.
_RUN_EPILOG = f"""\b
Exit codes:
  0    every job started
  1    the run finished; some jobs failed, ended unknown, or were never sent
  {UsageError.exit_code}    bad usage or bad input: nothing was sent
  {HaltError.exit_code}    halted by a safety stop (auth failure, --halt, unwritable ledger)
  {EXIT_INTERRUPTED}  interrupted (SIGINT/SIGTERM): continue it with `launcher resume LEDGER`

\b
Examples:
  launcher run nightly.jsonl --region cn-north-4 --project-id 0123abcd --rate 30/s
  launcher run nightly.jsonl --config nightly.toml --ledger ledgers/n.jsonl --resume
  launcher resume ledgers/n.jsonl     (the same, with the manifest and options recorded)
"""


@cli.command(epilog=_RUN_EPILOG)
@click.argument("manifest", type=click.Path(dir_okay=False), required=False)
@options_of("run")
def run(manifest: str | None, config_path: str | None, **flags: Any) -> None:
    """Launch every job in MANIFEST.

    `run --resume --ledger LEDGER` without MANIFEST continues the recorded run
    with its recorded manifest and options, as `launcher resume LEDGER` does.
    """
    from launcher.run.runner import launch

    if manifest is None:
        if flags.get("resume") and flags.get("ledger"):
            _resume(flags.pop("ledger"), None, config_path, flags)
            return
        _fail(UsageError("run: give a MANIFEST, or --resume --ledger LEDGER to continue a run"))
    assert manifest is not None
    try:
        options, _ = load_options(flags, config_path, os.environ)
        configure_logging(options.log_format, options.log_level)
        with stdin_spooled(manifest) as path:  # `-`: stdin, read whole before it is checked
            result = launch(path, options, dict(os.environ))
    except LauncherError as error:
        _fail(error)
        return
    _exit(result, config_path)


def _exit(result: Any, config_path: str | None) -> None:
    """Exit with the run's code, saying first how to resume it if jobs are left."""
    from launcher.run.recorded import resume_command
    from launcher.run.runner import resume_hint

    if result.ledger is not None:
        hint = resume_hint(result, resume_command(result.ledger, config_path))
        if hint is not None:
            click.echo(hint, err=True)
    sys.exit(result.exit_code)


def _resume(
    ledger: str, manifest: str | None, config_path: str | None, flags: dict[str, Any]
) -> None:
    """Continue the run recorded in LEDGER: its manifest and options, `flags` over them."""
    from launcher.run.recorded import latest_header, recorded_manifest, recorded_options
    from launcher.run.runner import launch

    try:
        if flags.get("ledger") not in (None, ledger):
            raise UsageError(f"resume: the ledger is {ledger}; --ledger says otherwise")
        header = latest_header(ledger)
        file_values = {
            **recorded_options(header),
            **(load_config_file(config_path) if config_path else {}),
        }
        flags = {**flags, "ledger": ledger, "resume": True}
        source = config_path or f"{ledger}: recorded options"
        options = resolve_options(flags, file_values, os.environ, config_path=source)
        configure_logging(options.log_format, options.log_level)
        result = launch(recorded_manifest(ledger, header, manifest), options, dict(os.environ))
    except LauncherError as error:
        _fail(error)
        return
    _exit(result, config_path)


@cli.command("resume")
@click.argument("ledger_path", metavar="LEDGER", type=click.Path(dir_okay=False))
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False),
    help="The run's manifest, if it moved (the same content: its hash is checked).",
)
@options_of("run")
def resume_run(
    ledger_path: str, manifest_path: str | None, config_path: str | None, **flags: Any
) -> None:
    """Continue the run recorded in LEDGER with its manifest and options.

    Flags given override the recorded options (and are recorded); the run's
    target (endpoint, project, workspace, action, shard) must stay the same
    unless --force. A recorded --deadline is not reused (it bounded that
    invocation's window); give one again if this one needs it.
    """
    _resume(ledger_path, manifest_path, config_path, flags)


@cli.command("validate")
@click.argument("manifest", type=click.Path(dir_okay=False))
@options_of("validate")
def validate_command(manifest: str, config_path: str | None, **flags: Any) -> None:
    """Check MANIFEST exactly as `run` would, and send nothing.

    The options, a --config file and the environment are read as `run` reads
    them (and checked: a bad value in the file is an error here too), so a
    manifest valid here is one `run` accepts with the same ones.
    """
    from launcher.run import plan_manifest

    try:
        options, _ = load_options(flags, config_path, os.environ)
        with stdin_spooled(manifest) as path:
            plan = plan_manifest(path, options)
    except LauncherError as error:
        _fail(error)
        return
    result = plan.validation
    click.echo(f"{manifest}: {result.jobs} job(s), valid (sha256 {result.sha256[:16]}…)")
    if options.shard:
        click.echo(f"shard {options.shard}: {plan.jobs} job(s)")


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
@options_of("replay")
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
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False),
    help="The source run's manifest, if it moved (for jobs the run never sent).",
)
def replay(
    source: str,
    config_path: str | None,
    only: str | None,
    map_workspace: tuple[str, ...],
    manifest_path: str | None,
    **flags: Any,
) -> None:
    """Re-issue the jobs recorded in LEDGER as a new run, into another project,
    workspace or region (--endpoint/--region), with its own ledger.

    A replay to the source's own endpoint and project is refused unless --force."""
    from dataclasses import replace

    from launcher.run.connect import resolve_endpoint
    from launcher.run.replay import parse_only, parse_workspace_map, plan_replay
    from launcher.run.runner import launch

    try:
        options, file_values = load_options(flags, config_path, os.environ)
        configure_logging(options.log_format, options.log_level)
        if options.resume:
            raise UsageError(
                "replay --resume: resume a replay with `launcher resume REPLAY.jsonl` "
                "(the replay's ledger)"
            )
        plan = plan_replay(
            source,
            only=parse_only(only),
            project_id=flags.get("project_id") or file_values.get("project_id"),
            workspace_map=parse_workspace_map(map_workspace),
            ledger=options.ledger,
            endpoint=resolve_endpoint(options, os.environ),  # before anything is written
            force=options.force,
            manifest=manifest_path,
        )
        click.echo(f"replay: {plan.jobs} job(s) from {source} -> {plan.manifest}", err=True)
        # Nothing to replay (no job had those outcomes) is an answer, not an error.
        options = replace(options, ledger=str(plan.ledger), allow_empty=True)
        result = launch(str(plan.manifest), options, dict(os.environ))
    except LauncherError as error:
        _fail(error)
        return
    _exit(result, config_path)


@cli.command("snapshot")
@options_of("snapshot")
@click.option(
    "--workspace",
    "workspaces",
    multiple=True,
    help="Workspace to list (repeatable) [the default workspace].",
)
@click.option("--status", help="Keep only jobs in these states: SCHEDULING,STOPPED,PAUSED [all].")
@click.option("--name-filter", help="Keep only jobs whose name contains this text.")
@click.option(
    "--output", default="-", show_default=True, help="Manifest to write (JSONL); - for stdout."
)
def snapshot_command(
    config_path: str | None,
    workspaces: tuple[str, ...],
    status: str | None,
    name_filter: str | None,
    output: str,
    **flags: Any,
) -> None:
    """Write the service's job list as a manifest (one {"name", "workspace",
    "project_id"} line per job) that `validate` and `run` accept as it is."""
    from launcher.run.snapshot import parse_states, snapshot

    try:
        options, _ = load_options(flags, config_path, os.environ)
        configure_logging(options.log_format, options.log_level)
        count = snapshot(
            options,
            dict(os.environ),
            workspaces=workspaces,
            states=parse_states(status),
            name_filter=name_filter,
            output=output,
        )
    except LauncherError as error:
        _fail(error)
        return
    click.echo(f"snapshot: {count} job(s) -> {output}", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="launcher")
