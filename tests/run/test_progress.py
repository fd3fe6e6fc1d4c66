"""Progress display: plain periodic lines off a TTY, a bar on one; both end on the final count."""

from __future__ import annotations

import io
from collections import Counter

import anyio
import pytest

from launcher.flow.dispatch import Tally
from launcher.run.progress import show_progress, status_line


def test_status_line_says_done_rate_eta_and_failures() -> None:
    tally = Tally(total=100, done=40, started=38, failed=2, failures=Counter({"DLF.0100": 2}))
    line = status_line(tally, elapsed=4.0)
    assert line.startswith("40/100 done, 38 started, 2 failed")
    assert "10.0 jobs/s" in line
    assert "ETA 6s" in line
    assert "DLF.0100×2" in line


def test_status_line_names_the_workspace_limit_that_binds_and_its_eta() -> None:
    """Issue 16: a slow workspace held every other back with a wrong ETA and no hint why."""
    tally = Tally(total=200, done=100)
    tally.queued["ws-warehouse"] = 90
    tally.limits["ws-warehouse"] = ("5/s", 5.0)
    line = status_line(tally, elapsed=2.0)  # 50 jobs/s so far: 2 s for the other 100...
    assert "held back by ws-warehouse: 5/s (90 queued)" in line
    assert "ETA 18s" in line  # ...but 90 jobs at 5/s take 18 s


def test_status_line_says_how_many_lost_answers_are_being_checked() -> None:
    """A check waits out --settle before it may resend: the wait shows, it is not a hang."""
    assert "checked" not in status_line(Tally(total=10, done=2), elapsed=1.0)
    line = status_line(Tally(total=10, done=2, checking=3), elapsed=1.0)
    assert "3 lost answers being checked" in line
    assert "1 lost answer being checked" in status_line(Tally(total=3, checking=1), elapsed=1.0)


@pytest.mark.anyio
@pytest.mark.parametrize("tty", [False, True])
async def test_progress_ends_on_the_final_count(tty: bool) -> None:
    tally = Tally(total=10)
    out = io.StringIO()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: show_progress(tally, stream=out, interval=0.01, tty=tty))
        await anyio.sleep(0.05)
        tally.done = tally.started = 10
        tg.cancel_scope.cancel()
    assert "10/10" in out.getvalue()
