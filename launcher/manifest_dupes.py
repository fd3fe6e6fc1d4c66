"""The duplicate checks' memory: 64-bit keys, each with the line it was first seen on.

`validate` keys each job by the first 64 bits of its identity and each given
`id` by `_key64`; `_FirstLines` holds a million of them in 25-50 MB.
"""

from __future__ import annotations

import hashlib
from array import array

__all__ = ["_FirstLines", "_key64"]


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _FirstLines:
    """A set of 64-bit keys, each with the line it was first seen on.

    A dict[int, int] costs ~110 bytes a job (two int objects plus the table);
    this open-addressing table in two flat arrays costs 12 bytes a slot at a
    load of 1/4-1/2, so a million jobs fit in 25-50 MB.
    """

    __slots__ = ("count", "keys", "limit", "lines", "mask")

    def __init__(self, bits: int = 12) -> None:
        size = 1 << bits
        self.keys = array("Q", bytes(8 * size))  # 0 marks an empty slot
        self.lines = array("I", bytes(4 * size))
        self.mask = size - 1
        self.limit = size >> 1
        self.count = 0

    def add(self, key: int, line: int) -> int:
        """Record `key` first seen on `line`; return 0 if new, else its first line."""
        key = key or 1  # 0 is the empty marker; one more alias among 2^64 is harmless
        keys = self.keys
        mask = self.mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                keys[i] = key
                self.lines[i] = line
                self.count += 1
                if self.count > self.limit:
                    self._grow()
                return 0
            if k == key:
                return self.lines[i]
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_keys, old_lines = self.keys, self.lines
        size = (self.mask + 1) * 2
        keys = array("Q", bytes(8 * size))
        lines = array("I", bytes(4 * size))
        mask = size - 1
        for j, k in enumerate(old_keys):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                lines[i] = old_lines[j]
        self.keys, self.lines, self.mask, self.limit = keys, lines, mask, size >> 1
