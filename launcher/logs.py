"""Logging through structlog to stderr: readable on a TTY, JSON lines otherwise.

Logs are for operators, the ledger is for the record: the per-request hot
path does not log. Exceptions are rendered without local variables, because
locals can hold credentials. URLs that may carry a password (Redis URLs, for
one) are shown through `redact_url`, and error texts that may quote one
through `scrub`: the password never reaches an output.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

# structlog imports rich, when it is installed (the progress bar uses it), only to
# pretty-print exceptions and their locals: we print exceptions plainly and never show
# locals, and rich's import is most of structlog's (see benchmarks/RESULTS.md, "Start-up
# tricks"). Hidden while structlog is imported, it makes structlog take its plain
# fallbacks; `launcher.run.progress` still imports rich when it draws the bar. The trick
# lives here only; tests/test_logs.py checks that it holds and that it is harmless.
_HIDE_RICH = "rich" not in sys.modules and "structlog" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # None: `import rich` fails
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

__all__ = [
    "LogFormat",
    "bind_log_context",
    "configure_logging",
    "get_logger",
    "redact_url",
    "scrub",
]

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


# -- URLs fit to show ----------------------------------------------------------------

_HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` with any password (in the user info or a `password=` query field) replaced by ***.

    A URL that cannot be parsed is replaced whole: it might hold a password
    in a place this function does not understand.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _password = userinfo.partition(":")
            if has_password:
                userinfo = f"{user}:{_HIDDEN}"
            elif user and parts.scheme in ("redis", "rediss"):
                # Some clients read `redis://secret@host` as a password: hide it too.
                userinfo = _HIDDEN
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if query:
            fields = [
                (name, _HIDDEN if name.lower() == "password" else value)
                for name, value in parse_qsl(query, keep_blank_values=True)
            ]
            query = urlencode(fields, safe="*")
        if f"{parts.scheme}://" not in url:
            return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        # Rebuilt by hand: urlunsplit drops the `//` of `unix:///path`.
        shown = f"{parts.scheme}://{netloc}{parts.path}"
        return (
            shown
            + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else "")
        )
    except ValueError:
        return "<unparsable Redis URL>"


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with every secret of `url` replaced by ***."""
    try:
        parts = urlsplit(url)
        secrets = {parts.password or ""}
        if parts.username and parts.password is None:
            secrets.add(parts.username)  # maybe a password, see `redact_url`
        secrets.update(
            value
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name.lower() == "password"
        )
    except ValueError:
        return text.replace(url, redact_url(url))
    text = text.replace(url, redact_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, _HIDDEN)
    return text
