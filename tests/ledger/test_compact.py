"""The compact map of 64-bit keys: it must behave like a dict, in flat arrays."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.ledger.compact import CompactMap

KEYS = st.integers(0, 2**64 - 1) | st.integers(0, 40)  # small keys: many repeats, and 0
VERBS = st.sampled_from(["set", "setdefault", "slot", "get"])
OPS = st.lists(st.tuples(VERBS, KEYS, st.integers(0, 2**32 - 1)), max_size=2000)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, wide=st.booleans())
def test_compact_map_behaves_like_a_dict(ops: list[tuple[str, int, int]], wide: bool) -> None:
    table = CompactMap(bits=1, value_bits=64 if wide else 32)  # tiny: grows many times
    model: dict[int, int] = {}
    for op, key, value in ops:
        if op == "set":
            table[key] = value
            model[key] = value
        elif op == "setdefault":
            assert table.setdefault(key, value) == model.setdefault(key, value)
        elif op == "slot":
            i = table.slot(key)
            model.setdefault(key, 0)  # a new key's value is 0
            assert table.values[i] == model[key]
            table.values[i] = value  # the index is valid until the next key is added
            model[key] = value
        else:
            assert table.get(key) == model.get(key)
            assert table.get(key, -1) == model.get(key, -1)
        assert len(table) == len(model)
    assert dict(table.items()) == model
    assert sorted(table) == sorted(model)
    for key, value in model.items():
        assert key in table
        assert table[key] == value
        assert table.find(key) >= 0
    absent = next(k for k in range(41, 100) if k not in model)
    assert absent not in table
    assert table.find(absent) == -1
    with pytest.raises(KeyError):
        table[absent]


def test_key_zero_is_an_ordinary_key() -> None:
    table = CompactMap()
    assert 0 not in table
    assert table.get(0) is None
    table[0] = 7
    table[1] = 8
    assert (0 in table, table[0], table[1], len(table)) == (True, 7, 8, 2)
    for n in range(2, 20_000):  # grow past several doublings: key 0's value moves along
        table[n] = n
    assert table[0] == 7
    assert len(table) == 20_000


def test_values_are_32_or_64_bits() -> None:
    narrow = CompactMap(value_bits=32)
    narrow[5] = 2**32 - 1
    with pytest.raises(OverflowError):
        narrow[6] = 2**32
    wide = CompactMap()
    wide[5] = 2**64 - 1
    assert wide[5] == 2**64 - 1
    assert (narrow.values.itemsize, wide.values.itemsize) == (4, 8)


def test_reserve_sizes_the_table_once() -> None:
    table = CompactMap()
    table.reserve(100_000)
    keys, capacity = table.keys, table.capacity
    assert capacity >= 200_000  # a load of at most 1/2
    rng = random.Random(3)
    for n in range(100_000):
        table[rng.getrandbits(64)] = n
    assert table.keys is keys  # never grew
    table.reserve(10)  # smaller: no-op
    assert table.capacity == capacity


def test_memory_is_flat_arrays() -> None:
    """16 bytes a slot at a load of 1/4-1/2: at most 64 bytes a key (a dict takes ~110)."""
    table = CompactMap()
    rng = random.Random(1)
    for n in range(1, 100_001):
        table[rng.getrandbits(64)] = n
        if n % 10_000 == 0:
            size = table.keys.itemsize * len(table.keys) + table.values.itemsize * len(table.values)
            assert size <= 64 * n + 8


def test_keys_written_to_their_empty_home_slot_count_as_added() -> None:
    table = CompactMap(bits=4)  # 16 slots, grows past 8 keys
    reference: dict[int, int] = {}
    rng = random.Random(7)
    added = 0
    for _ in range(200):
        key = rng.getrandbits(64) or 1
        i = key & (table.capacity - 1)
        if table.keys[i] == 0 and table.room() > added:  # as history.fold does
            table.keys[i] = key
            table.values[i] = 5
            added += 1
        else:
            table.note_added(added)
            added = 0
            table[key] = 5
        reference[key] = 5
    table.note_added(added)
    assert len(table) == len(reference)
    assert len(table) <= table.capacity // 2
    assert dict(table.items()) == reference
    assert table.room() == table.capacity // 2 - len(table)
