"""`--shard I/N`: which of N disjoint parts of a manifest a job belongs to.

Pure: the same job lands in the same shard on every host and in every version.
"""

from __future__ import annotations

import hashlib

from launcher.errors import UsageError

__all__ = ["parse_shard", "shard_of"]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) → (I, N); UsageError otherwise."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text!r}: write it as I/N with 0 <= I < N, e.g. 0/3")
    return i, n


def shard_of(job_id: str, count: int) -> int:
    """The shard (0..count-1) a job belongs to: a stable hash of its identity.

    Hashing the identity again (it may be a user's `id` like `etl-01`, not a
    hash) spreads jobs evenly whatever the ids look like; the same job lands in
    the same shard on every host and in every version.
    """
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
