"""The duplicate checks' memory: 64-bit keys, each with the line it was first seen on.

`validate` keys each job by the first 64 bits of its identity and each given
`id` by `_key64`; `_FirstLines` holds a million of them in 25-50 MB. The table
itself is `launcher.ledger.compact.CompactMap` (32-bit values), shared with the
ledger fold.
"""

from __future__ import annotations

import hashlib
from array import array

from launcher.ledger import CompactMap

__all__ = ["_FirstLines", "_key64"]


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _FirstLines(CompactMap):
    """A set of 64-bit keys, each with the line it was first seen on.

    A dict[int, int] costs ~110 bytes a job (two int objects plus the table);
    a `CompactMap` with 32-bit values costs 12 bytes a slot at a load of
    1/4-1/2, so a million jobs fit in 25-50 MB.
    """

    __slots__ = ()

    def __init__(self, bits: int = 12) -> None:
        super().__init__(bits=bits, value_bits=32)

    @property
    def lines(self) -> array[int]:
        """Each slot's first line (0: empty), parallel to `keys`."""
        return self.values

    def add(self, key: int, line: int) -> int:
        """Record `key` first seen on `line` (>= 1); return 0 if new, else its first line."""
        # A line number is never 0, so a 0 value means the key was just added.
        i = self.slot(key)
        values = self.values  # after slot(): adding may have replaced the array
        first = values[i]
        if not first:
            values[i] = line
        return first
