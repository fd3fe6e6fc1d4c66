"""Manifests: bytes in, checked jobs out.

`validate` reads a whole manifest (JSONL, CSV or YAML) and reports every bad
line as `FILE:LINE: field: problem`; `iter_jobs` streams the jobs of a valid
one; `file_sha256` is the identity a ledger records. Nothing here sends.
"""

from __future__ import annotations

from launcher.manifest.validate import (
    Defaults,
    Validation,
    detect_format,
    file_sha256,
    iter_jobs,
    scan,
    validate,
)

__all__ = [
    "Defaults",
    "Validation",
    "detect_format",
    "file_sha256",
    "iter_jobs",
    "scan",
    "validate",
]
