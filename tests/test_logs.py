"""logs.py: structlog without rich at start-up, and logs that keep secrets out."""

from __future__ import annotations

import io
import subprocess
import sys

from launcher.logs import configure_logging, get_logger


def test_starting_the_cli_does_not_import_rich() -> None:
    """rich is imported only for the progress bar, never by every process's start."""
    probe = "import sys, launcher.cli.main; print('rich' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_rich_still_imports_after_logs_hid_it() -> None:
    """Hiding rich while structlog loads leaves it importable (the progress bar needs it)."""
    probe = "import launcher.logs, rich.progress; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "ok"


def fail_holding(secret: str) -> None:
    """Raise while `secret` is a local variable of this frame."""
    raise RuntimeError("boom")


def test_exceptions_are_logged_without_their_locals() -> None:
    """A logged traceback never shows local variables' values (they can be secrets)."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        fail_holding("hunter2-secret-value")
    except RuntimeError:
        get_logger("test").exception("failed")
    rendered = out.getvalue()
    assert "fail_holding" in rendered  # the traceback is there...
    assert "hunter2" not in rendered  # ...without the frame's locals
