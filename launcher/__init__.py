"""launcher: an async, high-throughput batch launcher for DataArts Factory (DLF) jobs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
