"""Sharding: a deterministic, disjoint, covering partition by job identity, end to end."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from launch_helpers import job_lines, launcher, write_manifest

from launcher.errors import UsageError
from launcher.flow.shard import parse_shard, shard_of


@given(ids=st.sets(st.text(min_size=1, max_size=40), max_size=200), count=st.integers(1, 16))
def test_every_job_lands_in_exactly_one_shard(ids: set[str], count: int) -> None:
    shards = {job_id: shard_of(job_id, count) for job_id in ids}
    assert all(0 <= shard < count for shard in shards.values())
    assert {job_id: shard_of(job_id, count) for job_id in ids} == shards  # deterministic


def test_shards_are_balanced() -> None:
    sizes = Counter(shard_of(f"job-{n}", 4) for n in range(20_000))
    assert all(4_700 < size < 5_300 for size in sizes.values())


def test_shard_is_stable_across_versions() -> None:
    """Hosts running different versions must agree: these assignments are pinned."""
    assert [shard_of(f"job-{n}", 3) for n in range(8)] == [0, 1, 2, 0, 1, 2, 2, 1]
    assert shard_of("etl-orders", 7) == 1


@pytest.mark.parametrize("text", ["3/3", "-1/3", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shards_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="I/N"):
        parse_shard(text)


@pytest.mark.anyio
async def test_three_shards_start_every_job_exactly_once_and_reports_merge(
    tmp_path: Path,
) -> None:
    from launcher.simulator import running

    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(900))
    ledgers = [tmp_path / f"shard{i}.jsonl" for i in range(3)]
    async with running() as (sim, url):
        codes: list[int] = []

        async def shard(index: int) -> None:
            done = await launcher(
                "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--shard", f"{index}/3", "--ledger", str(ledgers[index]),
            )  # fmt: skip
            codes.append(done.code)

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(shard, index)
    assert codes == [0, 0, 0]
    for n in range(900):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    merged = await launcher("report", *map(str, ledgers), "--format", "json")
    report = orjson.loads(merged.stdout)
    assert report["jobs"] == 900
    assert report["outcomes"]["started"] == 900
    assert report["overlaps"] == 0
    assert report["missing_shards"] == []
    partial = orjson.loads(
        (await launcher("report", str(ledgers[0]), str(ledgers[2]), "--format", "json")).stdout
    )
    assert partial["missing_shards"] == ["1/3"]
    assert partial["jobs"] == 900
    assert partial["outcomes"]["pending"] == 900 - partial["outcomes"]["started"]
