"""Manifests: bytes in, checked jobs out.

`validate` reads a whole manifest (JSONL, CSV or YAML) and reports every bad
line as `FILE:LINE: field: problem`; `iter_jobs` streams the jobs of a valid
one (`checked=`: compared chunk by chunk with the bytes validated);
`file_sha256` is the identity a ledger records. `open_regular` refuses FIFOs
and devices; `stdin_spooled` turns `-` into a private copy of stdin. Nothing
here sends.
"""

from __future__ import annotations

from launcher.manifest.lines import open_regular, stdin_spooled
from launcher.manifest.validate import (
    Defaults,
    Validation,
    detect_format,
    file_digests,
    file_sha256,
    iter_jobs,
    scan,
    validate,
)

__all__ = [
    "Defaults",
    "Validation",
    "detect_format",
    "file_digests",
    "file_sha256",
    "iter_jobs",
    "open_regular",
    "scan",
    "stdin_spooled",
    "validate",
]
