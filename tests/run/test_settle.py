"""The settle window end to end: a call the service applies LATE is never sent twice.

The simulator's `late_fraction` answers 504 at once while the call takes effect
`late_seconds` later, as a gateway does when its backend is still at work: a status
check in between sees the old state. Only a check made once `--settle` has passed
since the ambiguous answer (or, on a resume, since the earlier run's intent) may
conclude that the call did not take effect.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from launch_helpers import job_lines, launcher, ledger_events, report_json, sim_env, write_manifest

from launcher.simulator import SimConfig, Simulator, running

pytestmark = pytest.mark.anyio

# The call lands LATE seconds after it arrived; the window is wider by a margin that
# a loaded machine does not eat (the window counts from the answer, or the intent).
LATE = 0.6
SETTLE = "1.5"


def _run(manifest: Path, url: str, ledger: Path, *extra: str) -> tuple[str, ...]:
    return (
        "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
        "--ledger", str(ledger), "--progress", "off", "--backoff-base", "0.01", *extra,
    )  # fmt: skip


async def _until_late(sim: Simulator, count: int) -> None:
    with anyio.fail_after(30):
        while sim.stats.faults["late"] < count:  # noqa: ASYNC110 - the sim has no event
            await anyio.sleep(0.01)


@pytest.mark.parametrize("action", ["start", "stop"])
async def test_a_504_whose_call_lands_late_is_not_sent_again(tmp_path: Path, action: str) -> None:
    """In-run: the first check waits out the window after the 504, then sees the call."""
    count = 12
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    ledger = tmp_path / "l.jsonl"
    # A stop is "not taken" while the job reads SCHEDULING: start them all first.
    estate = frozenset(f"job-{n:04d}" for n in range(count)) if action == "stop" else None
    faults = SimConfig(
        late_fraction=0.5, late_seconds=LATE, seed=4, known_jobs=estate,
        scheduled_fraction=1.0 if action == "stop" else 0.0,
    )  # fmt: skip
    async with running(faults) as (sim, url):
        done = await launcher(*_run(manifest, url, ledger, "--action", action, "--settle", SETTLE))
    assert done.code == 0, done.stdout + done.stderr
    for n in range(count):
        assert sim.stats.took_effect(action, "p1", f"job-{n:04d}") == 1, f"job-{n:04d}"
    late = sim.stats.faults["late"]
    assert 0 < late < count  # some calls landed late, others at once
    report = report_json(ledger)
    assert report["outcomes"]["started"] == count
    assert report["reconciled"] == late
    # Each late call: a quick look found the old state (too soon to tell), the look at
    # the end of the window found the call.
    checks = Counter(e["conclusion"] for e in ledger_events(ledger) if e["event"] == "check")
    assert checks == {"not_yet": late, "took_effect": late}


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_resume_after_kill_9_waits_for_a_request_written_before_the_crash(
    tmp_path: Path, workers: str
) -> None:
    """The run dies with its requests written and unanswered; the service applies them
    after the resume has begun: its checks wait out the window since each intent (in
    one process, and in a fleet whose workers each check their share)."""
    count = 6
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    ledger = tmp_path / "l.jsonl"
    # Every call is late (and its 504 slow): the crashed run's requests land 2.5 s after
    # they arrived, well after the resume has started and made its first check.
    faults = SimConfig(late_fraction=1.0, late_seconds=2.5, late_answer=30.0)
    async with running(faults) as (sim, url):
        args = _run(manifest, url, ledger, "--no-canary", "--timeout", "60")
        crashed = await anyio.open_process([sys.executable, "-m", "launcher", *args], env=sim_env())
        async with crashed:
            await _until_late(sim, count)  # every request is in the service's hands
            crashed.send_signal(signal.SIGKILL)
            await crashed.wait()
        assert sum(sim.stats.starts.values()) == 0  # none has landed yet
        done = await launcher(
            *args, "--resume", "--settle", "3.5", "--timeout", "1", "--workers", workers
        )
    assert done.code == 0, done.stdout + done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1, f"job-{n:04d}"
    assert sim.stats.faults["late"] == count  # the resume sent nothing
    report = report_json(ledger)
    assert report["outcomes"] == {"started": count, "failed": 0, "unknown": 0, "pending": 0}
    headers = [e for e in ledger_events(ledger) if e["event"] == "run"]
    assert len(headers) == 1 + int(workers)  # the crashed run, and each worker's segment


async def test_an_interrupt_inside_the_window_is_not_held_for_it(tmp_path: Path) -> None:
    """SIGINT while lost answers wait out a long --settle: the run stops without waiting
    for the window, leaves each job in doubt (no conclusion), and the resume checks
    them, after the window since each intent: every start reaches the service once."""
    count = 4
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    ledger = tmp_path / "l.jsonl"
    faults = SimConfig(late_fraction=1.0, late_seconds=LATE)
    async with running(faults) as (sim, url):
        args = _run(manifest, url, ledger, "--no-canary")
        interrupted = await anyio.open_process(
            [sys.executable, "-m", "launcher", *args, "--settle", "3600"], env=sim_env()
        )
        async with interrupted:
            await _until_late(sim, count)
            with anyio.fail_after(30):  # each lost answer had its quick look
                while sim.stats.by_route["jobs"] < count:  # noqa: ASYNC110 - no event
                    await anyio.sleep(0.01)
            interrupted.send_signal(signal.SIGINT)
            # A bound, not a timing: before, a stop waited out the window (or the
            # 30 s grace for requests in flight, whichever came first).
            with anyio.fail_after(20):
                code = await interrupted.wait()
        assert code == 130
        checks = Counter(e["conclusion"] for e in ledger_events(ledger) if e["event"] == "check")
        assert checks == {"not_yet": count}
        assert report_json(ledger)["outcomes"]["started"] == 0
        done = await launcher(*args, "--resume", "--settle", SETTLE)
    assert done.code == 0, done.stdout + done.stderr
    assert sim.stats.by_route["start"] == count  # nothing was sent again
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1, f"job-{n:04d}"
    report = report_json(ledger)
    assert report["outcomes"] == {"started": count, "failed": 0, "unknown": 0, "pending": 0}
    assert report["reconciled"] == count
