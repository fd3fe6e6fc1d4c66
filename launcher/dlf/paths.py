"""Request paths: a job name (or any value) as exactly one percent-encoded path segment."""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["path_segment"]

# What quote(safe="~") leaves alone: ASCII letters, digits and "_.-~".
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")


def path_segment(value: str) -> str:
    """Percent-encode `value` as exactly one path segment.

    `/`, `?`, `#`, spaces and non-ASCII are escaped; a segment made only of
    dots (`.`, `..`) is escaped too, because proxies and servers would
    otherwise collapse it as a relative path and start a different job.
    """
    if _PLAIN_SEGMENT.fullmatch(value) and value.strip("."):
        return value  # nothing to escape: quote() would return it unchanged
    encoded = quote(value, safe="~")
    if encoded.strip(".") == "":
        encoded = encoded.replace(".", "%2E")
    return encoded
