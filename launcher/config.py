"""Run options: flags, a TOML file and the environment, merged in that order of priority.

A flag wins over the file, the file over the environment, the environment over
the built-in default. Every value is checked here, before anything is sent,
and a bad one is a `UsageError` naming where it came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from launcher.errors import UsageError
from launcher.flow.pacing import parse_rate
from launcher.flow.policy import parse_duration, parse_halt
from launcher.flow.shard import parse_shard
from launcher.logs import redact_url
from launcher.models import ACTIONS, Action

__all__ = ["DEFAULT_RATE", "RunOptions", "load_config_file", "resolve_options"]

# The documented per-user limit of the DLF API: the safe default for a real service.
DEFAULT_RATE = "30/s"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `launcher run` needs besides the manifest and the credentials."""

    endpoint: str | None = None
    region: str | None = None
    project_id: str | None = None
    workspace: str | None = None
    ledger: str | None = None
    resume: bool = False
    shard: str | None = None
    force: bool = False
    retry_failed: bool = False
    concurrency: int = 64
    per_workspace: int = 0
    rate: float = 30.0
    burst: int = 1
    max_attempts: int = 5
    timeout: float = 10.0
    backoff_base: float = 0.1
    backoff_cap: float = 20.0
    action: Action = "start"
    allow_duplicates: bool = False
    dry_run: bool = False
    canary: bool = True
    adaptive: bool = True
    retry_budget: int = 500
    halt: str | None = None
    deadline: float | None = None
    ca_bundle: str | None = None
    iam_endpoint: str | None = None
    # Forward proxy URL for every call (IAM login too); None: HTTPS_PROXY etc.; "": none.
    proxy: str | None = None
    fsync: str = "batch"
    manifest_format: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    progress: str = "auto"
    # Scale-out (launcher.scale.limits): one rate limit for every launcher on the same key.
    redis: str | None = None
    limit_key: str | None = None
    redis_optional: bool = False
    shared_concurrency: int = 0
    # Dispatch processes (launcher.run.fleet): 0 = auto (every core at --rate 0 or a
    # high rate, one process otherwise).
    workers: int = 0
    # Prometheus metrics of the run on http://HOST:PORT/metrics (launcher.run.metrics).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
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


def _workspace_limits(path: str | os.PathLike[str], table: object) -> dict[str, Any]:
    """Check `[workspaces."ID"]` tables: each may set concurrency, rate and burst."""
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [workspaces] must hold one table per workspace")
    limits: dict[str, tuple[int, float, int]] = {}
    for workspace, entry in table.items():
        where = f'{path}: [workspaces."{workspace}"]'
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be a table")
        unknown = set(entry) - {"concurrency", "rate", "burst"}
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        try:
            concurrency = _positive_int(entry["concurrency"]) if "concurrency" in entry else 0
            rate = _rate(entry["rate"]) if "rate" in entry else 0.0
            burst = _positive_int(entry["burst"]) if "burst" in entry else 1
        except ValueError as error:
            raise UsageError(f"{where}: {error}") from None
        limits[workspace] = (concurrency, rate, burst)
    return limits


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number")
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number")
    number = float(value)
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


def _any_text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
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


def _workers(value: object) -> int:
    if value == "auto":
        return 0
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError("must be auto or a whole number of at least 1") from None


def _port(value: object) -> int:
    number = _non_negative_int(value)
    if number > 65535:
        raise ValueError("must be a port number, 0 to 65535")
    return number


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return check


_CONVERTERS: dict[str, Callable[[object], Any]] = {
    "endpoint": _text,
    "region": _header_safe,
    "project_id": _header_safe,
    "workspace": _header_safe,
    "ledger": _text,
    "resume": _flag,
    "shard": _shard,
    "force": _flag,
    "retry_failed": _flag,
    "concurrency": _positive_int,
    "per_workspace": _non_negative_int,
    "rate": _rate,
    "burst": _positive_int,
    "max_attempts": _positive_int,
    "timeout": _positive_float,
    "backoff_base": _positive_float,
    "backoff_cap": _positive_float,
    "action": _choice(*ACTIONS),
    "allow_duplicates": _flag,
    "dry_run": _flag,
    "canary": _flag,
    "adaptive": _flag,
    "retry_budget": _non_negative_int,
    "halt": _halt,
    "deadline": _duration,
    "ca_bundle": _text,
    "iam_endpoint": _text,
    "proxy": _any_text,  # "" turns proxies off
    "fsync": _choice("always", "batch", "never"),
    "manifest_format": _choice("jsonl", "csv", "yaml"),
    "log_format": _choice("auto", "console", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "progress": _choice("auto", "bar", "lines", "off"),
    "redis": _text,
    "limit_key": _text,
    "redis_optional": _flag,
    "shared_concurrency": _non_negative_int,
    "workers": _workers,
    "metrics_port": _port,
    "metrics_host": _text,
}

# Environment variables the official SDK users already set.
_ENVIRONMENT = {
    "project_id": "HUAWEICLOUD_SDK_PROJECT_ID",
    "region": "HUAWEICLOUD_SDK_REGION",
    # A Redis URL may hold a password: the environment keeps it off command lines.
    "redis": "LAUNCHER_REDIS_URL",
}


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config; keys are option names (`max-attempts` or `max_attempts`)."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the config: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "sim":
            if not isinstance(value, dict):
                raise UsageError(f"{path}: [sim] must be a table")
            values["sim"] = value
            continue
        if name == "loadtest":
            # `launcher loadtest`'s own table, checked by launcher.cli.loadtest.
            if not isinstance(value, dict):
                raise UsageError(f"{path}: [loadtest] must be a table")
            values["loadtest"] = value
            continue
        if name == "workspaces":
            values["workspaces"] = _workspace_limits(path, value)
            continue
        if name not in _CONVERTERS:
            raise UsageError(f"{path}: unknown option {key!r}")
        values[name] = value
    if "ledger" in values and isinstance(values["ledger"], str):
        # Paths in a config file are relative to the file, not to where it is run from.
        values["ledger"] = str(Path(path).parent / values["ledger"])
    return values


def resolve_options(
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    config_path: str | None = None,
) -> RunOptions:
    """Merge flags > config file > environment > defaults, checking every value."""
    merged: dict[str, Any] = {}
    for name, convert in _CONVERTERS.items():
        raw: object = None
        source = ""
        if flags.get(name) is not None:
            raw, source = flags[name], f"--{name.replace('_', '-')}"
        elif file_values.get(name) is not None:
            raw, source = file_values[name], f"{config_path}: {name}"
        elif name in _ENVIRONMENT and env.get(_ENVIRONMENT[name]):
            raw, source = env[_ENVIRONMENT[name]], _ENVIRONMENT[name]
        if raw is None:
            continue
        try:
            merged[name] = convert(raw)
        except ValueError as error:
            raise UsageError(f"{source}: {error}") from None
    if file_values.get("sim"):
        merged["sim"] = dict(file_values["sim"])
    if file_values.get("workspaces"):
        merged["workspaces"] = dict(file_values["workspaces"])
    return RunOptions(**merged)
