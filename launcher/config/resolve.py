"""Where option values come from: the flags, a TOML config file and the environment,
merged into `RunOptions` with every value checked and every problem reported at once.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from launcher.config.options import OPTIONS, RunOptions
from launcher.config.spec import Option, _positive_int, _rate
from launcher.errors import UsageError, require_extra
from launcher.manifest.lines import open_regular

__all__ = [
    "did_you_mean",
    "load_config_file",
    "load_options",
    "read_config_file",
    "resolve_options",
]

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
