"""Waves end to end: wave k+1 starts only after every job of waves <= k is settled."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import (
    job_lines,
    launcher,
    ledger_events,
    report_json,
    signal_when_started,
    write_manifest,
)

from launcher.run.waves import WaveCount, has_waves, wave_gate
from launcher.simulator.app import SimConfig, running


def interleaved(per_wave: int, waves: int, **fields: Any) -> list[dict[str, Any]]:
    """Jobs of `waves` waves, listed round-robin: the manifest order is not the wave order."""
    return [
        {"name": f"w{wave}-{n:04d}", "wave": wave, **fields}
        for n in range(per_wave)
        for wave in range(waves - 1, -1, -1)
    ]


def wave_of(events: list[dict[str, Any]]) -> dict[str, int]:
    """Each job's wave, from its first intent (which carries it when it is not 0)."""
    return {e["job"]: e.get("wave", 0) for e in events if e["event"] == "intent" and "name" in e}


def assert_ordered(events: list[dict[str, Any]]) -> None:
    """In each segment, no intent of a wave is written before every event of the waves before it."""
    waves = wave_of(events)
    last_event: dict[int, int] = {}  # wave -> index of its last job event
    first_intent: dict[int, int] = {}
    for index, event in enumerate(events):
        if event["event"] == "run":
            check_order(first_intent, last_event)
            last_event, first_intent = {}, {}
        if event["event"] not in ("intent", "result", "check"):
            continue
        wave = waves[event["job"]]
        last_event[wave] = index
        if event["event"] == "intent":
            first_intent.setdefault(wave, index)
    check_order(first_intent, last_event)


def check_order(first_intent: dict[int, int], last_event: dict[int, int]) -> None:
    for wave, first in first_intent.items():
        for earlier in range(wave):
            assert last_event.get(earlier, -1) < first, (earlier, wave)


# --- the gate: pure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "policy", "opens"),
    [
        (WaveCount(0, jobs=3, started=3, complete=True), "stop", True),
        (WaveCount(0, jobs=3, started=2, failed=1, complete=True), "stop", False),
        (WaveCount(0, jobs=3, started=2, unknown=1, complete=True), "stop", False),
        (WaveCount(0, jobs=3, started=2, complete=True), "stop", False),  # one pending
        (WaveCount(0, jobs=3, started=3, complete=False), "stop", False),  # stopped in it
        (WaveCount(0, jobs=3, started=0, failed=3, complete=True), "continue", True),
        (WaveCount(0, jobs=0, complete=True), "stop", True),  # an empty wave (another shard's)
    ],
)
def test_wave_gate(count: WaveCount, policy: Any, opens: bool) -> None:
    assert wave_gate(count, policy) is opens


def test_one_wave_is_no_waves() -> None:
    assert not has_waves(None)
    assert not has_waves({})
    assert not has_waves({3: 10})
    assert has_waves({0: 1, 1: 1})


# --- end to end ------------------------------------------------------------------

pytestmark_e2e = pytest.mark.anyio


@pytestmark_e2e
async def test_waves_run_in_order_under_faults(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", interleaved(40, 3))
    ledger = tmp_path / "l.jsonl"
    faults = SimConfig(
        fail_503=0.15, reset_after=0.1, slow_fraction=0.05, slow_seconds=0.3, seed=11
    )
    async with running(faults) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger), "--max-attempts", "10", "--backoff-base", "0.01",
            "--timeout", "2", "--workers", "4", "--settle", "0.1",
        )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    for wave in range(3):
        for n in range(40):
            assert sim.stats.took_effect("start", "p1", f"w{wave}-{n:04d}") == 1
    events = ledger_events(ledger)
    assert_ordered(events)
    assert sum(1 for e in events if e["event"] == "run") == 1  # --workers 4: still one process
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 120
    assert [(w["wave"], w["jobs"], w["started"], w["state"]) for w in report["waves"]] == [
        (0, 40, 40, "sent"),
        (1, 40, 40, "sent"),
        (2, 40, 40, "sent"),
    ]
    assert "waves" in done.stdout
    assert "#2" in done.stdout


@pytestmark_e2e
async def test_a_failed_wave_stops_the_run_and_a_resume_goes_on_when_asked(
    tmp_path: Path,
) -> None:
    lines = [
        *job_lines(5, prefix="dim", wave=0),
        {"name": "missing-dim", "wave": 0},
        *job_lines(5, prefix="fact", wave=1),
        *job_lines(5, prefix="agg", wave=2),
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(missing_prefix="missing-")) as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--ledger", str(ledger))  # fmt: skip
        first = await launcher(*base)
        assert first.code == 1
        assert not any(key[2].startswith(("fact", "agg")) for key in sim.stats.starts)
        report = report_json(ledger)
        assert report["outcomes"] == {"started": 5, "failed": 1, "unknown": 0, "pending": 10}
        assert report["stop_reasons"] == ["wave"]
        assert [(w["wave"], w["state"], w["pending"]) for w in report["waves"]] == [
            (0, "sent", 0),
            (1, "not reached", 5),
            (2, "not reached", 5),
        ]
        # A plain resume judges wave 0 by its jobs, earlier ones included: still closed.
        again = await launcher(*base, "--resume")
        assert again.code == 1
        assert not any(key[2].startswith(("fact", "agg")) for key in sim.stats.starts)
        goes_on = await launcher(*base, "--resume", "--wave-failures", "continue")
    assert goes_on.code == 1  # the missing job still failed
    for n in range(5):
        for prefix in ("dim", "fact", "agg"):
            assert sim.stats.took_effect("start", "p1", f"{prefix}-{n:04d}") == 1
    assert_ordered(ledger_events(ledger))
    report = report_json(ledger)
    assert report["outcomes"] == {"started": 15, "failed": 1, "unknown": 0, "pending": 0}
    assert [(w["wave"], w["started"], w["failed"]) for w in report["waves"]] == [
        (0, 5, 1),
        (1, 5, 0),
        (2, 5, 0),
    ]


@pytestmark_e2e
async def test_kill_9_mid_waves_then_resume_keeps_the_order(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", interleaved(100, 3))
    ledger = tmp_path / "l.jsonl"
    run = ("run", str(manifest), "--endpoint", "", "--project-id", "p1", "--rate", "200/s",
           "--ledger", str(ledger), "--no-adaptive")  # fmt: skip
    async with running(SimConfig(reset_after=0.05, seed=2)) as (sim, url):
        args = tuple(url if a == "" else a for a in run)
        await signal_when_started(sim, 20, signal.SIGKILL, *args)
        cut = sum(sim.stats.starts.values())
        done = await launcher(*args, "--resume")
    assert 0 < cut < 300
    assert done.code == 0, done.stdout + done.stderr
    for wave in range(3):
        for n in range(100):
            assert sim.stats.took_effect("start", "p1", f"w{wave}-{n:04d}") == 1
    assert_ordered(ledger_events(ledger))
    assert [w["started"] for w in report_json(ledger)["waves"]] == [100, 100, 100]
