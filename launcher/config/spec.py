"""What an option is: `Option`, the `_option` that declares one as a `RunOptions` field,
the commands that take options, and the converters that check a raw value.

A converter takes a raw value (a flag's text, a TOML value, a variable) and returns
the checked value, or raises ValueError with a message fit for the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any, Final, Literal, NamedTuple, TypeVar, get_args

from launcher.errors import UsageError
from launcher.flow.pacing import parse_rate
from launcher.flow.policy import parse_duration, parse_halt
from launcher.flow.shard import parse_shard

__all__ = ["Command", "Kind", "Option"]

# The commands whose options come from `OPTIONS` (launcher.config.options).
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


# Converters (see the module docstring).


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
