"""The command line: click commands only, each a thin shell over a lower room."""

from __future__ import annotations

from launcher.cli.main import main

__all__ = ["main"]
