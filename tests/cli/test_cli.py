"""The command line as an operator meets it: generated options, validate = run, help, completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from launch_helpers import clean_env, launcher, write_manifest

from launcher import __version__
from launcher.cli.main import cli
from launcher.config import OPTIONS, Option, RunOptions
from launcher.run import RunResult
from launcher.simulator.app import running

SAMPLES: dict[str, str] = {
    "shard": "1/2",
    "rate": "7/s",
    "halt": "fail=3",
    "deadline": "90s",
    "wait_timeout": "90s",
    "settle": "250ms",
    "workers": "2",
}


def flag_args(option: Option) -> list[str]:
    """The command-line words that give `option` a value other than its default."""
    first, _, negative = option.declaration.partition("/")
    if option.kind == "flag":
        if negative:  # --adaptive/--no-adaptive: the default is on
            return [negative if option.default else first]
        return [first]
    if option.name in SAMPLES:
        return [first, SAMPLES[option.name]]
    if option.kind == "choice":
        return [first, next(c for c in option.choices if c != option.default)]
    if option.kind == "int":
        return [first, "7"]
    if option.kind == "float":
        return [first, "2.5"]
    return [first, "x-1"]


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    """The options `run` hands to `launch` (which is replaced: this is about parsing)."""
    import launcher.run.runner as runner

    seen: list[RunOptions] = []

    def launch(manifest: str, options: RunOptions, env: Any) -> RunResult:
        seen.append(options)
        return RunResult(0, None, None)

    monkeypatch.setattr(runner, "launch", launch)
    return seen


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_every_run_option_is_a_flag_of_run_that_reaches_run_options(
    option: Option, launched: list[RunOptions], tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "m.jsonl"), *flag_args(option)])
    assert result.exit_code == 0, result.output
    assert getattr(launched[0], option.name) != option.default


def command_options(name: str) -> set[str]:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    return {p.name for p in command.params if isinstance(p, click.Option) and p.name}


@pytest.mark.parametrize(
    ("command", "own"),
    [
        ("run", set()),
        ("replay", {"only", "map_workspace"}),
        ("validate", set()),
        ("loadtest", {"rate", "duration", "ramp", "once", "max_in_flight", "thresholds"}),
    ],
)
def test_each_command_takes_the_options_the_table_gives_it(command: str, own: set[str]) -> None:
    taken = command_options(command)
    assert {o.name for o in OPTIONS if command in o.commands} | {"config_path"} <= taken
    assert own <= taken
    # A run option the table does not give the command is not one of its flags
    # (loadtest has its own --rate, --max-attempts and --metrics-port, with their own meaning).
    others = {o.name for o in OPTIONS if command not in o.commands} - own
    same_names = {"rate", "max_attempts", "canary", "metrics_port", "metrics_host"}
    assert not (others & taken) - same_names


def test_the_command_line_contract_keeps_its_spelling() -> None:
    """interface.md and the README name these flags: the table must keep generating them."""
    run = cli.get_command(click.Context(cli), "run")
    assert run is not None
    flags = {flag for p in run.params for flag in [*p.opts, *p.secondary_opts]}
    for flag in (
        "--config", "--endpoint", "--region", "--project-id", "--workspace", "--ledger",
        "--resume", "--concurrency", "--rate", "--max-attempts", "--timeout", "--dry-run",
        "--format", "--no-canary", "--adaptive", "--no-adaptive", "--workers", "--shard",
    ):  # fmt: skip
        assert flag in flags


# --- validate reads options as run does -----------------------------------------------------


def lines_without_project(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m.jsonl", [{"name": "a", "workspace": "w"}, {"name": "b"}])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("how", "args", "env"),
    [
        ("environment", [], {"HUAWEICLOUD_SDK_PROJECT_ID": "p-env"}),
        ("flag", ["--project-id", "p-flag"], {}),
        ("config", ["--config", "{config}"], {}),
    ],
)
async def test_a_manifest_validate_accepts_is_one_run_accepts(
    tmp_path: Path, how: str, args: list[str], env: dict[str, str]
) -> None:
    manifest = lines_without_project(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('project-id = "p-file"\nworkspace = "ws-1"\n')
    args = [a.replace("{config}", str(config)) for a in args]
    validated = await launcher("validate", str(manifest), *args, env=clean_env(**env))
    assert validated.code == 0, validated.stderr
    assert "2 job(s), valid" in validated.stdout
    async with running() as (sim, url):
        ran = await launcher(
            "run", str(manifest), *args, "--endpoint", url, "--ledger", str(tmp_path / "l.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK="AK", HUAWEICLOUD_SDK_SK="SK", **env),
        )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert sim.stats.requests > 0


@pytest.mark.anyio
async def test_validate_refuses_what_run_refuses_a_missing_project(tmp_path: Path) -> None:
    """Before: validate said valid, then run failed every line on project_id."""
    manifest = lines_without_project(tmp_path)
    validated = await launcher("validate", str(manifest), env=clean_env())
    assert validated.code == 2
    assert "m.jsonl:1: project_id: no project id" in validated.stderr
    assert "m.jsonl:2: project_id: no project id" in validated.stderr
    async with running() as (sim, url):
        ran = await launcher(
            "run", str(manifest), "--endpoint", url, "--ledger", str(tmp_path / "l.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK="AK", HUAWEICLOUD_SDK_SK="SK"),
        )  # fmt: skip
    assert ran.code == 2
    assert "m.jsonl:1: project_id: no project id" in ran.stderr
    assert sim.stats.requests == 0


def test_validate_counts_a_shard_as_run_would_send_it(tmp_path: Path) -> None:
    jobs = [{"name": f"j{n}", "project_id": "p"} for n in range(40)]
    manifest = write_manifest(tmp_path / "m.jsonl", jobs)
    counts = []
    for index in range(3):
        result = CliRunner().invoke(cli, ["validate", str(manifest), "--shard", f"{index}/3"])
        assert result.exit_code == 0, result.output
        first, shard = result.output.splitlines()
        assert first.startswith(f"{manifest}: 40 job(s), valid")
        assert shard.startswith(f"shard {index}/3: ")
        counts.append(int(shard.split(": ")[1].split()[0]))
    assert sum(counts) == 40
    assert all(counts)
    bad = CliRunner().invoke(cli, ["validate", str(manifest), "--shard", "3/3"])
    assert bad.exit_code == 2
    assert "--shard: " in bad.output


def test_validate_reports_every_config_problem_at_once(tmp_path: Path) -> None:
    manifest = lines_without_project(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('concurancy = 4\nrate = "fast"\n[loadtest]\nrtae = "5/s"\n')
    result = CliRunner().invoke(cli, ["validate", str(manifest), "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"launcher: error: {config}: unknown option 'concurancy'; did you mean 'concurrency'?",
        f"{config}: rate: invalid rate 'fast': write it as 30/s, 120/m, 5000/h, or 0 for unlimited",
    ]


def test_loadtest_config_problems_come_together_with_suggestions(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'timeout = 0\n[loadtest]\nrate = "5/s"\nduration = "1s"\nrtae = "5/s"\n'
        "max_in_fligt = 3\nmax_in_flight = 0\nmetrics_port = 70000\n"
    )
    result = CliRunner().invoke(
        cli, ["loadtest", str(tmp_path / "m.jsonl"), "--config", str(config), "--once"]
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"launcher: error: {config}: timeout: must be more than 0",
        f"{config}: [loadtest]: unknown option 'rtae'; did you mean 'rate'?",
        f"{config}: [loadtest]: unknown option 'max_in_fligt'; did you mean 'max_in_flight'?",
        f"{config}: [loadtest] max_in_flight: must be at least 1",
        f"{config}: [loadtest] metrics_port: must be at least 0 and at most 65535",
    ]


def test_loadtest_thresholds_come_from_the_table_when_no_flag_gives_one(tmp_path: Path) -> None:
    """click gives an unused repeatable --threshold as (): the table's thresholds stand."""
    from launcher.cli.loadtest import load_config, loadtest_settings

    config = tmp_path / "c.toml"
    config.write_text('[loadtest]\nrate = "5/s"\nduration = "1s"\nthresholds = ["p99<1s"]\n')
    _, table = load_config(str(config))
    settings = loadtest_settings({"thresholds": ()}, table, RunOptions())
    assert [t.text for t in settings.thresholds] == ["p99<1s"]
    flagged = loadtest_settings({"thresholds": ("p50<2s",)}, table, RunOptions())
    assert [t.text for t in flagged.thresholds] == ["p50<2s"]


# --- help, version, completion --------------------------------------------------------------


def test_run_help_shows_the_exit_codes_and_examples() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    text = result.output
    for code in ("0", "1", "2", "3", "130"):
        assert f"\n    {code} " in text
    assert "Examples:" in text
    assert "launcher run nightly.jsonl --region cn-north-4" in text
    assert "--resume" in text.split("Examples:")[1]


def test_version_prints_the_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"launcher, version {__version__}\n"


@pytest.mark.anyio
async def test_bash_completion_as_the_readme_documents_it() -> None:
    source = await launcher(env=clean_env(_LAUNCHER_COMPLETE="bash_source"))
    assert source.code == 0
    assert "_launcher_completion" in source.stdout
    words = await launcher(
        env=clean_env(
            _LAUNCHER_COMPLETE="bash_complete", COMP_WORDS="launcher run --concu", COMP_CWORD="2"
        )
    )
    assert words.stdout.split() == ["plain,--concurrency"]
    commands = await launcher(
        env=clean_env(_LAUNCHER_COMPLETE="bash_complete", COMP_WORDS="launcher lo", COMP_CWORD="1")
    )
    assert commands.stdout.split() == ["plain,loadtest"]


def test_the_help_of_the_group_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("run", "validate", "report", "replay", "loadtest", "sim"):
        assert f"\n  {name} " in result.output
