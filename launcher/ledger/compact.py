"""A compact map of 64-bit keys to 64- or 32-bit values, for a value per job at a million jobs.

A `dict[int, int]` costs ~110 bytes an entry (two int objects plus the hash
table); `CompactMap` is an open-addressing table (linear probing) in two flat
arrays: 16 bytes a slot with 64-bit values, 12 with 32-bit ones, at a load of
1/4-1/2 (it doubles when half full), so a million entries take 32-64 MB (24-48
MB with 32-bit values) and no Python object per entry.

Keys should be well mixed (hash outputs, digests): the home slot of a key is
its low bits. Key 0 marks an empty slot, so its value lives in one extra slot
at the end of `values` (index `capacity`), which keeps key 0 an ordinary key.
Nothing is ever removed: the users (manifest duplicate checks, ledger folds)
only add and update.

This class is the only code that probes the table (reads `keys`). The hot
loops (`validate`, the ledger fold) ask it for the index of a key's value
(`slot`, or `slots` for a whole batch of keys in one call) and then read or
write `values[i]` themselves: one probe per lookup-or-insert, instead of a
`get` followed by a `__setitem__`. Merging a part folded elsewhere
(`holds_any`, `add_absent`) and reading what it holds (`nonzero_items`,
`nonzero_values`) are methods too.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, islice
from typing import Literal

__all__ = ["CompactMap"]

_TYPECODES = {64: "Q", 32: "I"}


class CompactMap:
    """A map of 64-bit unsigned keys to 64- or 32-bit unsigned values (a new key's value is 0).

    Supports `len`, `in`, `[]` (get and set), `get`, `setdefault`, iteration over
    keys and `items()`, like a dict without deletion. `slot(key)` returns the
    index in `values` of `key`'s value, adding the key (value 0) if absent; the
    index stays valid until the next key is added (adding may grow the table,
    replacing `keys` and `values`: read those attributes again after adding).
    """

    __slots__ = ("_count", "_has_zero", "_limit", "_mask", "keys", "values")

    def __init__(self, *, bits: int = 12, value_bits: Literal[32, 64] = 64) -> None:
        size = 1 << bits
        code = _TYPECODES[value_bits]
        # Zero-filled by repetition: no temporary bytes object as large as the array.
        self.keys = array("Q", [0]) * size  # 0 marks an empty slot
        # One slot more than `keys`: the value of key 0, which cannot live among them.
        self.values = array(code, [0]) * (size + 1)
        self._mask = size - 1
        self._limit = size >> 1  # grow past a load of 1/2: linear probing stays short
        self._count = 0  # keys other than 0
        self._has_zero = False

    @property
    def capacity(self) -> int:
        """Slots in the table (a power of two); `values[capacity]` holds key 0's value."""
        return self._mask + 1

    def __len__(self) -> int:
        return self._count + self._has_zero

    def slot(self, key: int) -> int:
        """The index in `values` of `key`'s value; adds `key` (value 0) if absent."""
        if not key:
            self._has_zero = True
            return self._mask + 1
        keys = self.keys
        mask = self._mask
        i = key & mask
        while True:
            k = keys[i]
            if k == key:
                return i
            if not k:
                if self._count >= self._limit:
                    self._grow()
                    return self.slot(key)
                keys[i] = key
                self._count += 1
                return i
            i = (i + 1) & mask

    def slots(self, keys: Sequence[int]) -> list[int]:
        """The index in `values` of each key's value, adding those absent (value 0).

        One call for a batch: room for every key is made first, so the
        indexes all stay valid until the next key is added (or `reserve` grows
        the table). The same key twice gets the same index.
        """
        self.reserve(self._count + len(keys))
        table = self.keys
        mask = self._mask
        found: list[int] = []
        append = found.append
        added = 0
        for key in keys:
            i = key & mask
            k = table[i]
            while k != key:
                if not k:
                    if key:
                        table[i] = key
                        added += 1
                    break
                i = (i + 1) & mask
                k = table[i]
            else:
                if not key:  # key 0 lives past the end
                    self._has_zero = True
                    i = mask + 1
            append(i)
        self._count += added
        return found

    def holds_any(self, keys: Iterable[int]) -> bool:
        """Whether any of `keys` is in the table."""
        find = self.find
        return any(find(key) >= 0 for key in keys)

    def add_absent(self, keys: Sequence[int], values: Sequence[int]) -> None:
        """Add `keys` (none in the table yet, none 0, no two alike) with their `values`."""
        self.reserve(self._count + len(keys))
        table, stored = self.keys, self.values
        mask = self._mask
        for key, value in zip(keys, values, strict=True):
            i = key & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = key
            stored[i] = value
        self._count += len(keys)

    def nonzero_items(self) -> tuple[array[int], array[int]]:
        """The keys whose value is not 0, and those values, as parallel arrays ('Q')."""
        values = self.values
        keys = array("Q", compress(self.keys, values))  # (key 0 is never among them)
        return keys, array("Q", filter(None, islice(values, self._mask + 1)))

    def nonzero_values(self) -> Iterator[int]:
        """Every value that is not 0 (key 0's included), in table order."""
        return filter(None, self.values)

    def find(self, key: int) -> int:
        """The index in `values` of `key`'s value, or -1 if `key` is absent."""
        if not key:
            return self._mask + 1 if self._has_zero else -1
        keys = self.keys
        mask = self._mask
        i = key & mask
        while True:
            k = keys[i]
            if k == key:
                return i
            if not k:
                return -1
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and 0 <= key < 1 << 64 and self.find(key) >= 0

    def get(self, key: int, default: int | None = None) -> int | None:
        """`key`'s value, or `default` if absent."""
        i = self.find(key)
        return default if i < 0 else self.values[i]

    def __getitem__(self, key: int) -> int:
        i = self.find(key)
        if i < 0:
            raise KeyError(key)
        return self.values[i]

    def __setitem__(self, key: int, value: int) -> None:
        i = self.slot(key)
        self.values[i] = value

    def setdefault(self, key: int, value: int) -> int:
        """`key`'s value; if absent, add it with `value` first."""
        before = self._count + self._has_zero
        i = self.slot(key)
        values = self.values  # after slot(): adding may have replaced the array
        if self._count + self._has_zero != before:
            values[i] = value
        return values[i]

    def reserve(self, count: int) -> bool:
        """Grow now to hold `count` keys without growing again; True if it grew.

        Growing is the peak of memory (old and new arrays at once): sizing the
        table up front, when the count is known, keeps that peak away.
        """
        size = self._mask + 1
        while count > size >> 1:
            size *= 2
        if size > self._mask + 1:
            self._grow(size)
            return True
        return False

    def __iter__(self) -> Iterator[int]:
        if self._has_zero:
            yield 0
        for key in self.keys:
            if key:
                yield key

    def items(self) -> Iterator[tuple[int, int]]:
        """(key, value) pairs, in table order (not insertion order)."""
        values = self.values
        if self._has_zero:
            yield 0, values[self._mask + 1]
        for i, key in enumerate(self.keys):
            if key:
                yield key, values[i]

    def _grow(self, size: int = 0) -> None:
        """Move every key to a table of `size` slots (default: twice as many)."""
        old_keys, old_values = self.keys, self.values
        size = size or (self._mask + 1) * 2
        keys = array("Q", [0]) * size
        values = array(old_values.typecode, [0]) * (size + 1)
        values[size] = old_values[self._mask + 1]  # key 0's value moves to the new end
        mask = size - 1
        for j, k in enumerate(old_keys if self._count else ()):  # an empty table: nothing to move
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                values[i] = old_values[j]
        self.keys, self.values, self._mask, self._limit = keys, values, mask, size >> 1
