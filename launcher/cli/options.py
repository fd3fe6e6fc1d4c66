"""The click options of a command, generated from the one table of options.

`launcher.config.OPTIONS` declares every run option once; `options_of("run")`
turns the ones a command takes into click options (plus `--config`). Every
generated option defaults to None, so that the resolver can tell a flag that
was given from one that was not (flag > config file > environment > default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from launcher.config import OPTIONS, Command, Option

__all__ = ["click_option", "options_of"]

F = TypeVar("F", bound=Callable[..., Any])

_TYPES: dict[str, click.ParamType[Any, Any]] = {
    "int": click.INT,
    "float": click.FLOAT,
    "path": click.Path(dir_okay=False),
}


def click_option(option: Option) -> Callable[[F], F]:
    """The click option of one table entry."""
    declaration = option.declaration
    if option.kind == "flag":
        if "/" in declaration:  # --adaptive/--no-adaptive
            return click.option(declaration, option.name, default=None, help=option.help_text())
        if declaration.startswith("--no-"):  # --no-canary: the option's False
            return click.option(
                declaration,
                option.name,
                flag_value=False,
                default=None,
                help=option.help_text(),
            )
        return click.option(
            declaration, option.name, is_flag=True, default=None, help=option.help_text()
        )
    kind: click.ParamType[Any, Any] | None = (
        click.Choice(option.choices) if option.kind == "choice" else _TYPES.get(option.kind)
    )
    return click.option(
        declaration, option.name, type=kind, metavar=option.metavar, help=option.help_text()
    )


def options_of(command: Command) -> Callable[[F], F]:
    """Decorate a click command with `--config` and every option `command` takes."""
    decorators = [
        click.option(
            "--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of options."
        ),
        *(click_option(option) for option in OPTIONS if command in option.commands),
    ]

    def decorate(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate
