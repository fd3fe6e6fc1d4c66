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


def test_slots_of_a_batch_find_or_add_every_key_and_stay_valid_through_it() -> None:
    table = CompactMap(bits=2)  # 4 slots: every batch below makes it grow first
    reference: dict[int, int] = {}
    rng = random.Random(7)
    for round_ in range(60):
        old = list(reference)
        batch = [rng.getrandbits(64) or 1 for _ in range(rng.randint(0, 40))]
        batch += rng.sample(old, min(len(old), 10)) + [0] * (round_ % 2) + batch[:3]
        slots = table.slots(batch)
        for key, i in zip(batch, slots, strict=True):  # as the ledger fold does
            assert table.values[i] == reference.get(key, 0)
            table.values[i] += 1
            reference[key] = reference.get(key, 0) + 1
        assert len(table) == len(reference)
        assert len(table) <= table.capacity // 2 + 1  # (key 0 lives past the end)
    assert dict(table.items()) == reference


def test_absent_keys_are_added_whole_and_nonzero_items_read_back() -> None:
    table = CompactMap(bits=2)
    table[5] = 1
    rng = random.Random(3)
    keys = list({rng.getrandbits(64) or 1 for _ in range(300)} - {5})
    assert table.holds_any([*keys[:5], 5])
    assert not table.holds_any(keys)
    table.add_absent(keys, [n + 1 for n in range(len(keys))])
    table[99 if 99 not in keys else 98] = 0  # a key with value 0 is no item
    found, values = table.nonzero_items()
    assert dict(zip(found, values, strict=True)) == {5: 1} | {k: n + 1 for n, k in enumerate(keys)}
    assert sorted(table.nonzero_values()) == sorted(values)
    assert len(table) <= table.capacity // 2
