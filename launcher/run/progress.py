"""Live progress: a bar on a TTY, plain periodic lines otherwise.

Both read the dispatcher's `Tally`; neither touches the per-request path.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio

from launcher.flow.dispatch import Tally

__all__ = ["show_progress", "status_line"]


def status_line(tally: Tally, elapsed: float) -> str:
    """One line of progress: done/total, rate, ETA and failures so far."""
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, tally.total - tally.done)
    eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
    wave = f"{tally.wave}: " if tally.wave else ""
    line = (
        f"{wave}{tally.done}/{tally.total} done, {tally.started} started, {tally.failed} failed, "
        f"{tally.unknown} unknown, {tally.in_flight} in flight, {rate:.1f} jobs/s, ETA {eta}"
    )
    if tally.throttled:
        line += f", {tally.throttled} throttled"
    if tally.failures:
        top = ", ".join(f"{code}×{n}" for code, n in tally.failures.most_common(3))
        line += f" [{top}]"
    return line


async def show_progress(
    tally: Tally,
    *,
    stream: TextIO | None = None,
    interval: float | None = None,
    tty: bool | None = None,
) -> None:
    """Display progress until cancelled (the caller cancels it when the run ends)."""
    out = stream if stream is not None else sys.stderr
    is_tty = out.isatty() if tty is None else tty
    start = time.monotonic()
    if not is_tty:
        period = interval if interval is not None else 10.0
        try:
            while True:
                await anyio.sleep(period)
                out.write(status_line(tally, time.monotonic() - start) + "\n")
                out.flush()
        finally:
            if tally.done:
                out.write(status_line(tally, time.monotonic() - start) + "\n")
                out.flush()
    # rich costs ~50 ms of CPU to import: only a run that draws the bar pays it.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=out)
    columns = (
        TextColumn("[bold]launch {task.fields[wave]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("launch", total=tally.total or None, rate=0.0, failed=0, wave="")

        def refresh() -> None:
            elapsed = time.monotonic() - start
            bar.update(
                task,
                completed=tally.done,
                rate=tally.done / elapsed if elapsed > 0 else 0.0,
                failed=tally.failed,
                wave=tally.wave,
            )

        try:
            while True:
                refresh()
                await anyio.sleep(interval if interval is not None else 0.2)
        finally:
            refresh()  # the bar ends on the final count, not the last tick's
