"""Run options: flags, a TOML file and the environment, merged in that order of priority.

Every option is declared once, as a field of `RunOptions` made by `_option`:
its name, type, default, help, converter, environment variable and the
commands that take it. `OPTIONS` is that table; `launcher.cli.options`
generates the click options of `run`, `replay`, `validate` and `loadtest` from
it, and `read_config_file` / `resolve_options` below read it for the TOML file
and the environment.

A flag wins over the file, the file over the environment, the environment over
the built-in default. Every value is checked here, before anything is sent; a
bad one is a `UsageError` naming where it came from (the flag, the file and
key, or the variable), and every problem found is reported at once.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeVar, get_args

from launcher.errors import UsageError, require_extra
from launcher.flow.pacing import parse_rate
from launcher.flow.policy import parse_duration, parse_halt
from launcher.flow.shard import parse_shard
from launcher.ledger.writer import FsyncPolicy
from launcher.logs import LogFormat, redact_url
from launcher.manifest.lines import open_regular
from launcher.manifest.validate import Format
from launcher.models import Action

__all__ = [
    "DEFAULT_RATE",
    "OPTIONS",
    "Command",
    "LogLevel",
    "Option",
    "ProgressMode",
    "RunOptions",
    "did_you_mean",
    "load_config_file",
    "load_options",
    "read_config_file",
    "resolve_options",
]

# The documented per-user limit of the DLF API: the safe default for a real service.
DEFAULT_RATE = "30/s"

LogLevel = Literal["debug", "info", "warning", "error"]
ProgressMode = Literal["auto", "bar", "lines", "off"]
WaveFailures = Literal["stop", "continue"]
# The commands whose options come from this table.
Command = Literal["run", "replay", "validate", "loadtest", "snapshot"]
# How a value is given on the command line (the converter checks it in every case).
Kind = Literal["text", "path", "int", "float", "choice", "flag"]

_T = TypeVar("_T")
_SPEC: Final = "launcher.option"

# Who takes what: `replay` is a run of recorded jobs, so it takes every run option;
# `validate` takes those that decide what the manifest holds and whether it is valid;
# `loadtest` those that say where and how to call the service.
_RUN: frozenset[Command] = frozenset({"run", "replay"})
_MANIFEST: frozenset[Command] = _RUN | {"validate", "loadtest"}
_SERVICE: frozenset[Command] = _RUN | {"loadtest"}
# How to reach the service and log: every command that calls it, `snapshot` included.
_CONNECT: frozenset[Command] = _SERVICE | {"snapshot"}
# Pacing and retries of a run's calls, which snapshot's pages share.
_PACED: frozenset[Command] = _RUN | {"snapshot"}


class Option(NamedTuple):
    """One option of `OPTIONS`: everything the flag, the TOML key and the variable need.

    (A named tuple: a second frozen dataclass would cost every process's start ~1 ms.)
    """

    name: str  # the RunOptions field and the TOML key (`max_attempts` or `max-attempts`)
    default: object
    convert: Callable[[object], Any]  # checks and converts one raw value (ValueError)
    help: str
    commands: frozenset[Command]
    kind: Kind
    choices: tuple[str, ...] = ()
    flag: str = ""  # the click declaration: `--format`, `--no-canary`, `--adaptive/--no-adaptive`
    env: str | None = None  # the environment variable it may come from
    metavar: str | None = None
    shown: str | None = None  # the default as `--help` shows it, when not the value itself

    @property
    def key(self) -> str:
        """The TOML key as the docs write it (`max-attempts`)."""
        return self.name.replace("_", "-")

    @property
    def declaration(self) -> str:
        return self.flag or f"--{self.key}"

    @property
    def source(self) -> str:
        """How an error names the flag: `--format`, `--canary`, `--adaptive`."""
        first = self.declaration.split("/")[0]
        return f"--{self.key}" if first.startswith("--no-") else first

    def help_text(self) -> str:
        """The help line: the text, the variable, and the default in brackets."""
        text = self.help
        if self.env:
            text += f" (env {self.env})"
        shown = self.shown
        if shown is None and self.default is not None and not isinstance(self.default, bool):
            shown = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        if shown:
            text += f" [{shown}]"
        return text + "."


# Converters: raw value (a flag's text, a TOML value, a variable) in, checked value
# out, ValueError with a message fit for the user otherwise.


def _whole_at_least(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("must be a whole number")
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < low:
            raise ValueError(f"must be at least {low}" if low else "must be 0 or more")
        return number

    return check


_positive_int = _whole_at_least(1)
_non_negative_int = _whole_at_least(0)


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not number > 0:
        raise ValueError("must be more than 0")
    return number


def _rate(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a rate such as 30/s")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a rate such as 30/s")
    return parse_rate(value)


def _halt(value: object) -> str:
    text = _text(value)
    parse_halt(text)
    return text


def _duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _positive_float(value)
    return parse_duration(_text(value))


def _shard(value: object) -> str:
    text = _text(value)
    try:
        parse_shard(text)
    except UsageError as error:
        raise ValueError(str(error).partition(": ")[2]) from None
    return text


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _header_safe(value: object) -> str:
    text = _text(value)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain whitespace or control characters")
    return text


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _any_text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _port(value: object) -> int:
    number = _non_negative_int(value)
    if number > 65535:
        raise ValueError("must be a port number, 0 to 65535")
    return number


def _workers(value: object) -> int:
    if value == "auto":
        return 0
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError("must be auto or a whole number of at least 1") from None


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return check


# What a converter expects on the command line: a click type there gives the usual
# "is not a valid integer" before our own range check.
_KINDS: dict[Callable[[object], Any], Kind] = {
    _positive_int: "int",
    _non_negative_int: "int",
    _positive_float: "float",
    _port: "int",
    _flag: "flag",
}


def _option(
    default: _T,
    convert: Callable[[object], Any] | object,
    help: str,
    *,
    commands: frozenset[Command] = _RUN,
    flag: str = "",
    env: str | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    path: bool = False,
) -> _T:
    """Declare a `RunOptions` field as an option. `convert` is a converter, or a
    `Literal` type whose values are the choices."""
    choices: tuple[str, ...] = ()
    if not callable(convert) or getattr(convert, "__origin__", None) is Literal:
        choices = tuple(get_args(convert))
        checker = _choice(choices)
    else:
        checker = convert
    kind: Kind = "choice" if choices else "path" if path else _KINDS.get(checker, "text")
    spec = Option("", default, checker, help, commands, kind, choices, flag, env, metavar, shown)
    return field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `launcher run` needs besides the manifest and the credentials.

    Each field made by `_option` is an option (see the module docstring).
    """

    endpoint: str | None = _option(
        None, _text, "DLF endpoint URL, or `sim` for the embedded simulator", commands=_CONNECT
    )
    region: str | None = _option(
        None,
        _header_safe,
        "Region id; derives the endpoint",
        commands=_CONNECT,
        env="HUAWEICLOUD_SDK_REGION",
    )
    project_id: str | None = _option(
        None,
        _header_safe,
        "Default project id",
        commands=_MANIFEST | {"snapshot"},
        env="HUAWEICLOUD_SDK_PROJECT_ID",
    )
    workspace: str | None = _option(
        None, _header_safe, "Default workspace for lines that name none", commands=_MANIFEST
    )
    ledger: str | None = _option(
        None, _text, "Ledger path", shown="ledgers/<manifest>-<UTC time>.jsonl"
    )
    resume: bool = _option(
        False,
        _flag,
        "Continue the run recorded in --ledger: settled jobs are skipped, "
        "jobs in doubt are checked with the service before any resend",
    )
    shard: str | None = _option(
        None,
        _shard,
        "Take the I-th of N disjoint parts of the manifest (0-based, by job identity)",
        commands=_RUN | {"validate"},
        metavar="I/N",
    )
    force: bool = _option(
        False,
        _flag,
        "Resume even if the manifest or the target (endpoint, project, workspace, action, "
        "shard) changed; replay to the source's own endpoint and project",
    )
    retry_failed: bool = _option(
        False, _flag, "On --resume, send permanent failures (DLF.* errors) again too"
    )
    concurrency: int = _option(64, _positive_int, "Most requests in flight at once")
    per_workspace: int = _option(
        0, _non_negative_int, "Most requests in flight per workspace", shown="no limit"
    )
    rate: float = _option(
        parse_rate(DEFAULT_RATE),
        _rate,
        "Most requests started per second: 30/s, 120/m, 0 = unlimited",
        commands=_PACED,
        shown=DEFAULT_RATE,
    )
    burst: int = _option(
        1, _positive_int, "Requests that may go back to back after idling", commands=_PACED
    )
    max_attempts: int = _option(
        5,
        _positive_int,
        "Attempts per job (per page for snapshot), the first included",
        commands=_PACED,
    )
    timeout: float = _option(
        10.0, _positive_float, "Per-request timeout in seconds", commands=_CONNECT
    )
    backoff_base: float = _option(
        0.1, _positive_float, "First retry waits up to this", shown="0.1 s"
    )
    backoff_cap: float = _option(20.0, _positive_float, "No retry waits longer", shown="20 s")
    settle: float = _option(
        5.0, _duration, "Resend a call whose answer was lost no sooner than this", shown="5s"
    )
    action: Action = _option("start", Action, "What to do to each job", commands=_SERVICE)
    allow_duplicates: bool = _option(False, _flag, "Accept the same job twice", commands=_MANIFEST)
    allow_empty: bool = _option(
        False,
        _flag,
        "An empty manifest is fine: exit 0, nothing to do (else exit 2)",
        commands=_RUN | {"validate"},
    )
    dry_run: bool = _option(False, _flag, "Validate and print the plan; send nothing")
    canary: bool = _option(True, _flag, "Do not send the first request alone", flag="--no-canary")
    adaptive: bool = _option(
        True,
        _flag,
        "Slow down on 429s and recover along a CUBIC curve",
        flag="--adaptive/--no-adaptive",
        shown="on",
    )
    retry_budget: int = _option(
        500,
        _non_negative_int,
        "Run-wide retry tokens (a retry costs 5, a success refunds 1); 0 = off",
    )
    halt: str | None = _option(
        None, _halt, "Stop dispatching when failures cross fail=N or fail=P%"
    )
    deadline: float | None = _option(
        None, _duration, "Bound the whole run (30m, 90s); unsent jobs end pending"
    )
    ca_bundle: str | None = _option(
        None,
        _text,
        "CA certificates (PEM) to trust instead of the system store",
        commands=_CONNECT,
        path=True,
    )
    iam_endpoint: str | None = _option(
        None,
        _text,
        "IAM endpoint for password login",
        commands=_CONNECT,
        shown="from --region",
    )
    # Forward proxy URL for every call (IAM login too); None: HTTPS_PROXY etc.; "": none.
    proxy: str | None = _option(
        None,
        _any_text,
        "Forward proxy for every call, IAM too: http://[USER:PASSWORD@]HOST:PORT; '' for none",
        commands=_CONNECT,
        metavar="URL",
        shown="HTTPS_PROXY, HTTP_PROXY, NO_PROXY",
    )
    fsync: FsyncPolicy = _option("batch", FsyncPolicy, "Ledger durability")
    manifest_format: Format | None = _option(
        None,
        Format,
        "Manifest format",
        commands=_MANIFEST,
        flag="--format",
        shown="by file suffix",
    )
    log_format: LogFormat = _option("auto", LogFormat, "Logs on stderr", commands=_CONNECT)
    log_level: LogLevel = _option("info", LogLevel, "Log level", commands=_CONNECT)
    progress: ProgressMode = _option("auto", ProgressMode, "Progress display")
    # Waves (launcher.run.waves), --wait (launcher.run.wait), --verify (launcher.run.verify).
    wave_failures: WaveFailures = _option(
        "stop",
        WaveFailures,
        "After a wave with failed, unknown or pending jobs: stop before the next wave "
        "(resumable), or continue",
    )
    wait: bool = _option(
        False,
        _flag,
        "With run-immediate: follow each accepted run until it ends; a failed run means exit 1",
    )
    wait_timeout: float = _option(
        6 * 3600.0,
        _duration,
        "Stop following a run this long after it was accepted (90s, 30m, 6h); it ends `unknown`",
        shown="6h",
    )
    verify: bool = _option(
        False,
        _flag,
        "After the last call, check in the job list that started jobs read SCHEDULING "
        "(stopped: STOPPED); a mismatch means exit 1",
    )
    # Scale-out (launcher.scale.limits): one rate limit for every launcher on the same key.
    redis: str | None = _option(
        None,
        _text,
        "Share the rate limit with every launcher on the same --limit-key through this "
        "Redis: redis://[:PASSWORD@]HOST:PORT/DB",
        # A Redis URL may hold a password: the environment keeps it off command lines.
        env="LAUNCHER_REDIS_URL",
    )
    limit_key: str | None = _option(
        None, _text, "Redis key of the shared limit", shown="from the endpoint host and the AK"
    )
    redis_optional: bool = _option(
        False,
        _flag,
        "If Redis is unreachable at start, warn and apply local limits (else exit 2)",
    )
    shared_concurrency: int = _option(
        0,
        _non_negative_int,
        "Most requests in flight across every launcher on the key; 0 = off",
    )
    # Dispatch processes (launcher.run.fleet): 0 = auto (every core at --rate 0 or a
    # high rate, one process otherwise).
    workers: int = _option(
        0,
        _workers,
        "Dispatch processes: auto uses every core at --rate 0 or a rate one "
        "process cannot reach, and one process otherwise",
        metavar="N|auto",
        shown="auto",
    )
    # Prometheus metrics of the run on http://HOST:PORT/metrics (launcher.run.metrics).
    metrics_port: int | None = _option(
        None,
        _port,
        "Serve Prometheus metrics of the run (jobs by outcome, attempts, in flight, "
        "failures by code) on this port",
    )
    metrics_host: str = _option("127.0.0.1", _text, "Address for --metrics-port")
    # Not options: tables of the config file.
    sim: Mapping[str, Any] = field(default_factory=dict)
    # Per-workspace limits from `[workspaces."ID"]` tables: {ID: (concurrency, rate, burst)}.
    workspaces: Mapping[str, tuple[int, float, int]] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The options as recorded in the ledger header (the Redis URL without its password)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sim"}
        if self.redis:
            values["redis"] = redact_url(self.redis)
        if self.proxy:
            values["proxy"] = redact_url(self.proxy)  # proxy credentials never recorded
        return values


# The table, in the order of the fields (the order of `--help`).
OPTIONS: tuple[Option, ...] = tuple(
    f.metadata[_SPEC]._replace(name=f.name) for f in fields(RunOptions) if _SPEC in f.metadata
)
_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
# The config file's tables besides the options.
_TABLES = ("sim", "loadtest", "workspaces")
_WORKSPACE_KEYS = ("concurrency", "rate", "burst")


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `known` (as click does for flags), or ``."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(where: str, key: str, known: Collection[str]) -> str:
    """`FILE: unknown option 'KEY'; did you mean 'NEAR'?`, in the spelling the key used."""
    spelled = [name.replace("_", "-") for name in known]
    if "_" in key:
        spelled = [name.replace("-", "_") for name in spelled]
    return f"{where}: unknown option {key!r}{did_you_mean(key, spelled)}"


def _problems(messages: list[str]) -> UsageError:
    return UsageError("\n".join(messages))


def _workspace_limits(
    path: str | os.PathLike[str], table: object, problems: list[str]
) -> dict[str, tuple[int, float, int]]:
    """Check `[workspaces."ID"]` tables: each may set concurrency, rate and burst."""
    if not isinstance(table, dict):
        problems.append(f"{path}: [workspaces] must hold one table per workspace")
        return {}
    limits: dict[str, tuple[int, float, int]] = {}
    for workspace, entry in table.items():
        where = f'{path}: [workspaces."{workspace}"]'
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a table")
            continue
        before = len(problems)
        problems.extend(
            _unknown(where, key, _WORKSPACE_KEYS) for key in entry if key not in _WORKSPACE_KEYS
        )
        values: dict[str, Any] = {"concurrency": 0, "rate": 0.0, "burst": 1}
        for key, convert in (
            ("concurrency", _positive_int),
            ("rate", _rate),
            ("burst", _positive_int),
        ):
            if key in entry:
                try:
                    values[key] = convert(entry[key])
                except ValueError as error:
                    problems.append(f"{where}: {key}: {error}")
        if len(problems) == before:
            limits[workspace] = (values["concurrency"], values["rate"], values["burst"])
    return limits


def read_config_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]]:
    """Read a TOML config: (its values, every problem found in it).

    Keys are option names (`max-attempts` or `max_attempts`); each problem names
    the file and the key, with a suggestion for an unknown key. Values with a
    problem are left out. An unreadable file or invalid TOML raises UsageError.
    """
    try:
        with open_regular(path, "config file") as handle:  # not a FIFO or a device
            raw = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the config: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {error}") from None
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in ("sim", "loadtest"):
            # [sim] configures the embedded simulator; [loadtest] is `launcher
            # loadtest`'s own table, checked by launcher.cli.loadtest.
            if isinstance(value, dict):
                values[name] = value
            else:
                problems.append(f"{path}: [{name}] must be a table")
        elif name == "workspaces":
            values["workspaces"] = _workspace_limits(path, value, problems)
        elif name not in _BY_NAME:
            # A table is suggested a table's name, a value an option's.
            known = _TABLES if isinstance(value, dict) else _BY_NAME
            problems.append(_unknown(str(path), key, known))
        elif isinstance(value, dict):
            problems.append(
                f"{path}: [{key}]: not a table but the option {key!r}{did_you_mean(key, _TABLES)}"
            )
        else:
            try:
                _BY_NAME[name].convert(value)
            except ValueError as error:
                problems.append(f"{path}: {key}: {error}")
            else:
                values[name] = value
    if isinstance(values.get("ledger"), str):
        # Paths in a config file are relative to the file, not to where it is run from.
        values["ledger"] = str(Path(path).parent / values["ledger"])
    return values, problems


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config (see `read_config_file`); any problem raises UsageError."""
    values, problems = read_config_file(path)
    if problems:
        raise _problems(problems)
    return values


def _resolve(
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    config_path: str | os.PathLike[str] | None,
    problems: list[str],
) -> RunOptions:
    merged: dict[str, Any] = {}
    for option in OPTIONS:
        name = option.name
        raw: object = None
        source = ""
        if flags.get(name) is not None:
            raw, source = flags[name], option.source
        elif file_values.get(name) is not None:
            raw, source = file_values[name], f"{config_path}: {option.key}"
        elif option.env and env.get(option.env):
            raw, source = env[option.env], option.env
        if raw is None:
            continue
        try:
            merged[name] = option.convert(raw)
        except ValueError as error:
            problems.append(f"{source}: {error}")
    if file_values.get("sim"):
        merged["sim"] = dict(file_values["sim"])
    if file_values.get("workspaces"):
        merged["workspaces"] = dict(file_values["workspaces"])
    if merged.get("redis") or merged.get("shared_concurrency"):
        require_extra("redis", "redis", "--redis (a limit shared through Redis)")
    return RunOptions(**merged)


def resolve_options(
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    config_path: str | os.PathLike[str] | None = None,
) -> RunOptions:
    """Merge flags > config file > environment > defaults, checking every value.

    Every bad value is reported, in one UsageError naming each one's source.
    """
    problems: list[str] = []
    options = _resolve(flags, file_values, env, config_path, problems)
    if problems:
        raise _problems(problems)
    return options


def load_options(
    flags: Mapping[str, Any],
    config_path: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    *,
    more: Callable[[dict[str, Any], list[str]], None] | None = None,
) -> tuple[RunOptions, dict[str, Any]]:
    """The options of a command: its flags, its `--config` file, the environment.

    Returns them with the file's values (its tables included). Every problem in
    the file, the flags and the environment is reported at once, in one
    UsageError; `more(file_values, problems)` may check more of the file first.
    """
    problems: list[str] = []
    file_values: dict[str, Any] = {}
    if config_path is not None:
        file_values, problems = read_config_file(config_path)
    if more is not None:
        more(file_values, problems)
    options = _resolve(flags, file_values, env, config_path, problems)
    if problems:
        raise _problems(problems)
    return options, file_values
