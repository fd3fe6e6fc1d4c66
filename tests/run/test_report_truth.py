"""`launcher report` tells the truth (issue 16.3): which ledgers are one run, every job
listed, a live run told from a dead one, elapsed without the gaps, exit 0/1/2.

End to end through the CLI against the simulator (real sockets); the lineage
rules themselves are pure and tested on made-up headers.
"""

from __future__ import annotations

import csv
import io
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from launch_helpers import job_lines, launcher, ledger_events, sim_env, write_manifest

from launcher.ledger.events import RunHeader
from launcher.ledger.lineage import (
    active_seconds,
    describe_state,
    group_runs,
    pid_alive,
    run_key,
    segment_states,
)
from launcher.simulator.app import SimConfig, running

pytestmark = pytest.mark.anyio


def _json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(text)
    return data


# --- pure rules ---------------------------------------------------------------------------


def _header(run_id: str, t: float, **fields: Any) -> RunHeader:
    return RunHeader.of({"event": "run", "run_id": run_id, "t": t, **fields})


def test_shards_of_one_run_group_and_other_runs_do_not() -> None:
    manifest = {"sha256": "abc"}
    options = {"action": "start", "project_id": "p1"}
    shard = {"manifest": manifest, "options": options, "endpoint": "https://x"}
    firsts = [
        ("s0", _header("r1", 0, shard="0/3", **shard)),
        ("night1", _header("r9", 0, manifest=manifest, options=options)),
        ("s1", _header("r2", 0, shard="1/3", **shard)),
        ("s2", _header("r3", 0, shard="2/3", **shard)),
        ("night2", _header("r8", 0, manifest=manifest, options=options)),
        ("other", _header("r4", 0, shard="0/3", **{**shard, "endpoint": "https://dr"})),
    ]
    assert group_runs(firsts) == [["s0", "s1", "s2"], ["night1"], ["night2"], ["other"]]
    assert run_key(RunHeader.of({"run_id": "w", "fleet": "f1"})) == ("run", "f1")


def test_elapsed_counts_segments_not_the_gaps_between_them() -> None:
    headers = [
        _header("a", 100.0),
        _header("b", 1000.0, resumes="a"),  # a was killed; resumed 15 minutes later
        _header("c", 5000.0, resumes="b"),
    ]
    footers = [{"run_id": "b", "t": 1010.0, "reason": "interrupted"}, {"run_id": "c", "t": 5002}]
    # a: known last write at 130 (its footer is missing); b: 10 s; c: 2 s.
    assert active_seconds(headers, footers, 5002.0, {"a": 130.0}) == pytest.approx(42.0)
    # Without the last write of a, it runs until b began: an upper bound.
    assert active_seconds(headers, footers, 5002.0) == pytest.approx(912.0)
    # Shards running at once count once.
    shards = [_header("s0", 0.0), _header("s1", 1.0)]
    ends = [{"run_id": "s0", "t": 10.0}, {"run_id": "s1", "t": 8.0}]
    assert active_seconds(shards, ends, 10.0) == pytest.approx(10.0)


def test_a_segment_without_an_end_is_running_interrupted_or_unknown() -> None:
    headers = [
        _header("a", 0, pid=11, host="here"),
        _header("b", 5, pid=12, host="here", resumes="a"),
        _header("s1", 0, pid=13, host="there"),
        _header("s2", 0, pid=14, host="here"),
    ]
    footers = [{"run_id": "s2", "reason": "deadline"}]

    def states(alive: set[int]) -> list[tuple[str, int | None]]:
        found = segment_states(headers, footers, this_host="here", alive=alive.__contains__)
        return [(s.state, s.pid) for s in found]

    assert states({12}) == [("running", 12), ("unknown", 13), ("deadline", 14)]
    assert states(set()) == [("interrupted", 12), ("unknown", 13), ("deadline", 14)]
    text = describe_state(
        segment_states(headers, footers, this_host="here", alive=lambda _pid: False), 3.0
    )
    assert "interrupted (pid 12 on here is gone" in text
    assert "running or interrupted (pid 13 on there: another host" in text


def test_a_pid_that_is_gone_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not pid_alive(process.pid)
    assert not pid_alive(0)


# --- end to end ---------------------------------------------------------------------------


async def test_a_file_that_is_not_a_ledger_exits_2(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
    done = await launcher("report", str(manifest))
    assert done.code == 2
    assert "not a ledger" in done.stderr
    assert "looks like a manifest" in done.stderr
    assert done.stdout == ""  # not `jobs 0`
    (tmp_path / "empty.jsonl").write_text("")
    assert (await launcher("report", str(tmp_path / "empty.jsonl"))).code == 2
    missing = await launcher("report", str(tmp_path / "nope.jsonl"))
    assert missing.code == 2
    assert "no such file" in missing.stderr


async def test_a_cut_short_run_lists_every_job_and_exits_1(tmp_path: Path) -> None:
    jobs = job_lines(30, prefix="a", workspace="ws-a") + job_lines(20, prefix="b", workspace="ws-b")
    manifest = write_manifest(tmp_path / "m.jsonl", jobs)
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(latency=0.01)) as (_sim, url):
        run = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger",
            str(ledger), "--rate", "40/s", "--deadline", "0.4", "--progress", "off",
        )  # fmt: skip
    assert run.code == 1, run.stderr
    text = await launcher("report", str(ledger))
    assert text.code == 1  # not every job started
    assert text.stdout == run.stdout  # the run's own summary and report agree
    as_json = _json((await launcher("report", str(ledger), "--format", "json")).stdout)
    pending = as_json["outcomes"]["pending"]
    assert pending > 20  # ws-b's jobs were never sent
    by_workspace = as_json["by_workspace"]
    assert by_workspace["ws-b"]["pending"] == 20
    assert sum(counts["pending"] for counts in by_workspace.values()) == pending
    assert as_json["stopped"] == ["deadline"]
    assert "stopped   deadline" in text.stdout
    rows = list(
        csv.DictReader(
            io.StringIO((await launcher("report", str(ledger), "--format", "csv")).stdout)
        )
    )
    assert sorted(row["name"] for row in rows) == sorted(job["name"] for job in jobs)
    assert sum(row["outcome"] == "pending" for row in rows) == pending
    listed = await launcher("report", str(ledger), "--outcome", "pending")
    assert listed.code == 1
    assert "pending  b-0019 [ws-b]" in listed.stdout
    # The manifest moved: the pending jobs are counted, and the report says why not named.
    manifest.rename(tmp_path / "moved.jsonl")
    moved = await launcher("report", str(ledger), "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(moved.stdout)))) == 50 - pending
    note = await launcher("report", str(ledger))
    assert "pending jobs not listed" in note.stdout
    assert "is not there any more" in note.stdout


async def test_a_resumed_run_reports_how_it_ended_not_how_a_segment_did(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    ledger = tmp_path / "l.jsonl"
    args = ("--project-id", "p1", "--ledger", str(ledger), "--progress", "off")
    async with running() as (_sim, url):
        first = await launcher(
            "run", str(manifest), "--endpoint", url, *args, "--rate", "40/s", "--deadline", "0.3"
        )
        assert first.code == 1
        await anyio.sleep(1.0)  # the gap between the two segments
        second = await launcher("run", str(manifest), "--endpoint", url, *args, "--resume")
        assert second.code == 0, second.stderr
    done = await launcher("report", str(ledger))
    assert done.code == 0
    assert "stopped" not in done.stdout  # the run completed; its first segment did not
    as_json = _json((await launcher("report", str(ledger), "--format", "json")).stdout)
    assert as_json["stopped"] == []
    assert as_json["state"] == "complete"
    assert as_json["stop_reasons"] == ["deadline", "complete"]
    times = [event["t"] for event in ledger_events(ledger) if "t" in event]
    assert as_json["elapsed_s"] < max(times) - min(times) - 0.9  # the gap is not counted


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


async def _wait_for_lines(path: Path, count: int) -> None:
    with anyio.fail_after(20):
        while _lines(path) < count:  # noqa: ASYNC110 - another process writes the file
            await anyio.sleep(0.05)


async def test_a_live_ledger_says_running_and_a_killed_one_interrupted(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(100))  # 10 s at 10/s
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        process = await anyio.open_process(
            [sys.executable, "-m", "launcher", "run", str(manifest), "--endpoint", url,
             "--project-id", "p1", "--ledger", str(ledger), "--rate", "10/s",
             "--progress", "off"],
            env=sim_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        async with process:
            await _wait_for_lines(ledger, 6)
            live = await launcher("report", str(ledger))
            live_json = _json((await launcher("report", str(ledger), "--format", "json")).stdout)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        dead = await launcher("report", str(ledger))
        await anyio.sleep(1.0)
        resumed = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger",
            str(ledger), "--resume", "--rate", "0", "--progress", "off",
        )  # fmt: skip
    host = socket.gethostname()
    assert live.code == 1
    assert f"state     running (pid {process.pid} on {host}, last write" in live.stdout
    assert live_json["state"] == "running"
    assert live_json["live"][0]["pid"] == process.pid
    assert dead.code == 1
    assert f"interrupted (pid {process.pid} on {host} is gone" in dead.stdout
    assert resumed.code == 0, resumed.stderr
    final = _json((await launcher("report", str(ledger), "--format", "json")).stdout)
    assert final["state"] == "complete"
    assert final["outcomes"]["started"] == 100
    # The killed segment counts up to its last write, not to the resume a second later.
    times = [event["t"] for event in ledger_events(ledger) if "t" in event]
    assert final["elapsed_s"] < max(times) - min(times) - 0.9
    assert "live" not in final


async def test_a_run_and_its_replay_are_two_runs(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(12, workspace="ws-1"))
    source, replayed = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    async with running() as (_sim, url):
        run = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger",
            str(source), "--rate", "0", "--progress", "off",
        )  # fmt: skip
        replay = await launcher(
            "replay", str(source), "--endpoint", url, "--project-id", "p2", "--ledger",
            str(replayed), "--rate", "0", "--progress", "off",
        )  # fmt: skip
    assert (run.code, replay.code) == (0, 0), run.stderr + replay.stderr
    both = await launcher("report", str(source), str(replayed), "--format", "json")
    assert both.code == 0
    runs = _json(both.stdout)["runs"]
    assert [(r["jobs"], r["outcomes"]["started"], r["overlaps"]) for r in runs] == [
        (12, 12, 0),
        (12, 12, 0),
    ]
    merged = _json(
        (
            await launcher("report", str(source), str(replayed), "--merge-runs", "--format", "json")
        ).stdout
    )
    # What merging used to do by default: a replay keeps its source's job ids, so every
    # job reads as present in two "shards".
    assert merged["overlaps"] == 12


# --- run --metrics-port ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _started(metrics: str) -> float:
    found = re.search(r'launcher_run_outcomes_total\{outcome="started"\} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


async def test_run_serves_prometheus_metrics_while_it_runs(tmp_path: Path) -> None:
    import aiohttp

    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    port = _free_port()
    async with running() as (_sim, url):
        process = await anyio.open_process(
            [sys.executable, "-m", "launcher", "run", str(manifest), "--endpoint", url,
             "--project-id", "p1", "--ledger", str(tmp_path / "l.jsonl"), "--rate", "20/s",
             "--progress", "off", "--metrics-port", str(port)],
            env=sim_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        async with process, aiohttp.ClientSession() as session:
            text = ""
            with anyio.fail_after(20):
                while _started(text) < 5:  # a fifth of the run, while it still runs
                    await anyio.sleep(0.1)
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                            text = await response.text()
                    except aiohttp.ClientConnectionError:
                        continue
            assert await process.wait() == 0
    assert "launcher_run_jobs 40.0" in text
    assert "launcher_run_attempts_total" in text
    assert "launcher_run_in_flight" in text


async def test_run_metrics_port_in_use_exits_2_and_sends_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running() as (sim, url):
            done = await launcher(
                "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger",
                str(tmp_path / "l.jsonl"), "--metrics-port", str(port),
            )  # fmt: skip
    assert done.code == 2, done.stderr
    assert f"--metrics-port {port}" in done.stderr
    assert sim.stats.requests == 0


@given(
    st.lists(
        st.tuples(st.floats(0, 1000, allow_nan=False), st.floats(0, 100, allow_nan=False)),
        min_size=1,
        max_size=8,
    ),
    st.randoms(),
)
def test_elapsed_is_the_union_of_the_segments(
    spans: list[tuple[float, float]], shuffle: random.Random
) -> None:
    headers = [_header(f"r{i}", start) for i, (start, _) in enumerate(spans)]
    footers = [{"run_id": f"r{i}", "t": start + length} for i, (start, length) in enumerate(spans)]
    total = active_seconds(headers, footers, 0.0)
    assert max(length for _, length in spans) - 1e-6 <= total
    assert total <= sum(length for _, length in spans) + 1e-6
    shuffle.shuffle(headers)
    assert active_seconds(headers, footers, 0.0) == pytest.approx(total)
