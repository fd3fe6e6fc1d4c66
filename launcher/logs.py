"""Logging through structlog to stderr: readable on a TTY, JSON lines otherwise.

Logs are for operators, the ledger is for the record: the per-request hot
path does not log. Exceptions are rendered without local variables, because
locals can hold credentials.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import orjson

# structlog imports rich, when it is installed (the progress bar uses it), only to
# pretty-print exceptions and their locals: we print exceptions plainly and never show
# locals, and rich costs ~60 ms of CPU at the start of every process, every --workers
# child included. Hidden while structlog is imported, it makes structlog take its plain
# fallbacks; `launcher.run.progress` still imports rich when it draws the bar.
_HIDE_RICH = "rich" not in sys.modules and "structlog" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # None: `import rich` fails
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

__all__ = ["LogFormat", "bind_log_context", "configure_logging", "get_logger"]

LogFormat = Literal["auto", "console", "json"]


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send structlog output to `stream` (stderr), as text on a TTY or JSON lines."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(),
                exception_formatter=structlog.dev.plain_traceback,
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def bind_log_context(**values: Any) -> None:
    """Add `values` to every log line this task (and the tasks it starts) writes from now on."""
    structlog.contextvars.bind_contextvars(**values)


def get_logger(name: str = "launcher") -> Any:
    """A structlog logger bound to `name`."""
    return structlog.get_logger(name)
