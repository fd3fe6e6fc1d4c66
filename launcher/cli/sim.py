"""`launcher sim`: run the DLF API simulator as a standalone server.

It prints the base URL on stdout once listening (so a script can read one line
and point `launcher run --endpoint` at it) and serves until SIGINT or SIGTERM,
then exits 0. Every `SimConfig` field has an option; `--config FILE` reads the
`[sim]` table of a TOML file first, and options given on the command line win.
Secrets (SKs, passwords, tokens) are never printed. They may come from the
environment (`LAUNCHER_SIM_AKSK`, `LAUNCHER_SIM_IAM_USERS`, `LAUNCHER_SIM_TOKENS`,
one entry a line) or the `[sim]` table of `--config`, which keep them out of
`ps`; the command-line options still work, with a warning.
"""

from __future__ import annotations

import os
import signal
import sys
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import click

from launcher.errors import LauncherError
from launcher.manifest.lines import open_regular
from launcher.simulator import SimConfig, Simulator

__all__ = ["load_known_jobs", "sim_command"]

_FRACTION = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)


def load_known_jobs(path: str) -> list[str]:
    """Job names from a file: one per line; blank lines and `#` comments are skipped."""
    with open_regular(path, "job list") as handle:  # (not a FIFO or a device)
        names = [line.strip() for line in handle.read().decode("utf-8").splitlines()]
    return [name for name in names if name and not name.startswith("#")]


def _file_table(path: str) -> dict[str, object]:
    try:
        with open_regular(path, "config file") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, LauncherError) as error:
        raise click.BadParameter(str(error), param_hint="--config") from None
    table = document.get("sim", {})
    if not isinstance(table, dict):
        raise click.BadParameter(f"{path}: [sim] must be a table", param_hint="--config")
    return table


# Secrets from the environment (one entry a line), so that they stay out of the
# command line, which every local user can read (`ps`). The [sim] table of
# --config takes the same keys (aksk, iam_users, tokens) from a file.
_SECRET_VARIABLES = {
    "aksk": "LAUNCHER_SIM_AKSK",  # AK:SK
    "iam_users": "LAUNCHER_SIM_IAM_USERS",  # NAME:PASSWORD:DOMAIN
    "tokens": "LAUNCHER_SIM_TOKENS",  # TOKEN
}


def _env_secrets(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """The secrets set in the environment: {config key: entries}."""
    found: dict[str, list[str]] = {}
    for key, variable in _SECRET_VARIABLES.items():
        entries = [line.strip() for line in environ.get(variable, "").splitlines()]
        if any(entries):
            found[key] = [entry for entry in entries if entry]
    return found


def _env_aksk(environ: Mapping[str, str]) -> str:
    ak = environ.get("HUAWEICLOUD_SDK_AK")
    sk = environ.get("HUAWEICLOUD_SDK_SK")
    if not ak or not sk:
        raise click.UsageError(
            "--check-signatures needs HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK in the environment"
        )
    return f"{ak}:{sk}"


async def _serve(config: SimConfig, host: str, port: int) -> Simulator:
    sim = Simulator(config)
    # Catch the signals before listening, so one sent right after the URL is printed
    # is never handled by the default action (which would exit non-zero).
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            base_url: str = await tg.start(sim.serve, host, port)
            click.echo(base_url)
            sys.stdout.flush()
            click.echo(f"launcher sim: serving the DLF API at {base_url}", err=True)
            bound = urlsplit(base_url).port
            where = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
            if host in ("", "0.0.0.0", "::"):
                where += " (every interface: reachable from other hosts)"
            click.echo(f"launcher sim: listening on {where}", err=True)
            async for _signum in signals:
                break
            tg.cancel_scope.cancel()
    return sim


def _bind_error(group: BaseException) -> OSError | None:
    # A failure in tg.start may arrive bare or wrapped in an exception group.
    if isinstance(group, OSError):
        return group
    if isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
    return None


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 = any free."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="TOML file whose [sim] table gives defaults for the options below.",
)
@click.option("--latency", type=_SECONDS, help="Seconds added to every answer [0].")
@click.option("--latency-jitter", type=_SECONDS, help="Up to this many more seconds [0].")
@click.option("--fail-503", type=_FRACTION, help="Fraction of job calls answered 503 [0].")
@click.option("--fail-500", type=_FRACTION, help="Fraction of job calls answered 500 [0].")
@click.option(
    "--fail-429", type=_FRACTION, help="Fraction of job calls answered 429 APIGW.0308 [0]."
)
@click.option("--retry-after", type=_SECONDS, help="Retry-After seconds on those 429s and 503s.")
@click.option(
    "--reset-before", type=_FRACTION, help="Fraction reset before processing (no effect) [0]."
)
@click.option(
    "--reset-after", type=_FRACTION, help="Fraction that take effect, then get reset [0]."
)
@click.option("--slow-fraction", type=_FRACTION, help="Fraction answered --slow-seconds late [0].")
@click.option("--slow-seconds", type=_SECONDS, help="Delay of a slow answer [2].")
@click.option(
    "--faults-on-queries/--no-faults-on-queries",
    default=None,
    help="Also inject faults into job-list and instance-list calls [no].",
)
@click.option(
    "--rate-limit", type=click.FloatRange(min=0.0, min_open=True), help="Accepted requests/s."
)
@click.option(
    "--rate-burst", type=click.FloatRange(min=1.0), help="Token-bucket size [rate/20, >= 1]."
)
@click.option(
    "--known-jobs",
    type=click.Path(dir_okay=False, exists=True),
    help="File of job names (one per line); only these exist.",
)
@click.option("--missing-prefix", help="Job names starting with this do not exist.")
@click.option(
    "--aksk", multiple=True, metavar="AK:SK", help="Accepted key pair; enables signature checks."
)
@click.option(
    "--check-signatures",
    is_flag=True,
    help="Check signatures with HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK from the environment.",
)
@click.option(
    "--lockout-threshold", type=click.IntRange(min=1), help="Bad signatures before a lock [5]."
)
@click.option("--lockout-seconds", type=_SECONDS, help="How long an AK stays locked [300].")
@click.option("--max-skew", type=_SECONDS, help="Accepted X-Sdk-Date clock skew, seconds [900].")
@click.option(
    "--iam-user",
    multiple=True,
    metavar="NAME:PASSWORD:DOMAIN",
    help="IAM user for /v3/auth/tokens; enables token checks.",
)
@click.option(
    "--token", multiple=True, metavar="TOKEN", help="A token accepted without login (repeatable)."
)
@click.option(
    "--token-ttl", type=click.FloatRange(min=0.0, min_open=True), help="Token lifetime [86400]."
)
@click.option(
    "--fail-504-after", type=_FRACTION, help="Fraction that take effect, then get 504 [0]."
)
@click.option("--refused-5xx", type=_FRACTION, help="Fraction refused before forwarding (500) [0].")
@click.option(
    "--late-fraction",
    type=_FRACTION,
    help="Fraction answered 504 that take effect only --late-seconds later [0].",
)
@click.option("--late-seconds", type=_SECONDS, help="When a late call takes effect [1].")
@click.option("--late-answer", type=_SECONDS, help="Seconds before a late call's 504 [0].")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Serve https with this PEM.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Private key of --tls-cert.")
@click.option(
    "--scheduled-fraction",
    type=_FRACTION,
    help="A seeded estate: this fraction of the --known-jobs reads SCHEDULING at first [0].",
)
@click.option(
    "--run-seconds", type=_SECONDS, help="How long a run-immediate instance runs [forever]."
)
@click.option("--run-fail", type=_FRACTION, help="Fraction of runs that end `fail`, seeded [0].")
@click.option("--seed", type=int, help="Seed of the fault draws (deterministic faults).")
def sim_command(
    host: str,
    port: int,
    config_path: str | None,
    known_jobs: str | None,
    aksk: tuple[str, ...],
    check_signatures: bool,
    iam_user: tuple[str, ...],
    token: tuple[str, ...],
    **options: Any,
) -> None:
    """Run the DLF API simulator; print its URL, serve until SIGINT/SIGTERM."""
    values: dict[str, object] = _file_table(config_path) if config_path else {}
    values.update({key: value for key, value in options.items() if value is not None})
    if known_jobs is not None:
        try:
            values["known_jobs"] = load_known_jobs(known_jobs)
        except (OSError, UnicodeDecodeError, LauncherError) as error:
            raise click.BadParameter(str(error), param_hint="--known-jobs") from None
    from_env = _env_secrets(os.environ)
    file_aksk = values.get("aksk")
    pairs = list(aksk) + from_env.get("aksk", [])
    if check_signatures:
        pairs.append(_env_aksk(os.environ))
    if pairs:
        if isinstance(file_aksk, Mapping):
            pairs += [f"{ak}:{sk}" for ak, sk in file_aksk.items()]
        elif isinstance(file_aksk, list):
            pairs += file_aksk
        values["aksk"] = pairs
    for key, given in (("iam_users", iam_user), ("tokens", token)):
        entries = list(given) + from_env.get(key, [])
        if entries:
            previous = values.get(key)
            values[key] = entries + (previous if isinstance(previous, list) else [])
    if aksk or iam_user or token:
        click.echo(
            "launcher sim: warning: secrets on the command line are visible to every local "
            f"user (ps); set {', '.join(_SECRET_VARIABLES.values())} instead (one entry a "
            "line), or the [sim] table of --config",
            err=True,
        )
    try:
        config = SimConfig.from_mapping(values)
    except ValueError as error:
        # from_mapping never puts a value of aksk, iam_users or tokens in a message.
        raise click.UsageError(str(error)) from None

    try:
        sim = anyio.run(_serve, config, host, port)
    except (OSError, BaseExceptionGroup) as error:
        bind_error = _bind_error(error)
        if bind_error is None:
            raise
        raise click.ClickException(f"cannot listen on {host}:{port}: {bind_error}") from None
    click.echo(f"launcher sim: stopped after {sim.stats.requests} request(s)", err=True)


if __name__ == "__main__":
    sim_command()
