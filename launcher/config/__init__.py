"""Run options: flags, a TOML file and the environment, merged in that order of priority.

Every option is declared once, as a field of `RunOptions` (`options`) made by
`_option` (`spec`): its name, type, default, help, converter, environment
variable and the commands that take it. `OPTIONS` is that table;
`launcher.cli.options` generates the click options of `run`, `replay`,
`validate` and `loadtest` from it, and `read_config_file` / `resolve_options`
(`resolve`) read it for the TOML file and the environment.

A flag wins over the file, the file over the environment, the environment over
the built-in default. Every value is checked here, before anything is sent; a
bad one is a `UsageError` naming where it came from (the flag, the file and
key, or the variable), and every problem found is reported at once.
"""

from __future__ import annotations

from launcher.config.options import (
    DEFAULT_RATE,
    OPTIONS,
    LogLevel,
    ProgressMode,
    RunOptions,
)
from launcher.config.resolve import (
    did_you_mean,
    load_config_file,
    load_options,
    read_config_file,
    resolve_options,
)
from launcher.config.spec import Command, Option

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
