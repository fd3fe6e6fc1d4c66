"""Live progress: a bar on a TTY, plain periodic lines otherwise.

Both read the dispatcher's `Tally`; neither touches the per-request path.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio

from launcher.flow.dispatch import Tally

__all__ = ["checking", "eta_seconds", "held_back", "show_progress", "status_line"]


def held_back(tally: Tally) -> str:
    """Which workspace limits hold jobs back now: `ws-warehouse: 5/s (84 queued)`."""
    parts = []
    for workspace, queued in tally.queued.most_common(3):
        if queued > 0:
            limit = tally.limits.get(workspace, ("its limit", 0.0))[0]
            parts.append(f"{workspace or '(no workspace)'}: {limit} ({queued} queued)")
    return ", ".join(parts)


def checking(tally: Tally) -> str:
    """`3 lost answers being checked`: jobs whose lost answer waits out --settle (mostly)
    before a check may resend the call."""
    return f"{tally.checking} lost answer{'s' if tally.checking != 1 else ''} being checked"


def eta_seconds(tally: Tally, rate: float) -> float | None:
    """Seconds left: the remaining jobs at the rate so far, but never less than a held
    workspace needs for its queued jobs at its own rate (None: no estimate yet)."""
    remaining = max(0, tally.total - tally.done)
    eta = remaining / rate if rate > 0 else None
    for workspace, queued in tally.queued.items():
        ws_rate = tally.limits.get(workspace, ("", 0.0))[1]
        if queued > 0 and ws_rate > 0:
            eta = max(eta or 0.0, queued / ws_rate)
    return eta


def status_line(tally: Tally, elapsed: float) -> str:
    """One line of progress: done/total, rate, ETA, failures so far, and the workspace
    limits holding jobs back (which bind the ETA)."""
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    seconds = eta_seconds(tally, rate)
    eta = f"{seconds:.0f}s" if seconds is not None else "?"
    wave = f"{tally.wave}: " if tally.wave else ""
    line = (
        f"{wave}{tally.done}/{tally.total} done, {tally.started} started, {tally.failed} failed, "
        f"{tally.unknown} unknown, {tally.in_flight} in flight, {rate:.1f} jobs/s, ETA {eta}"
    )
    if tally.throttled:
        line += f", {tally.throttled} throttled"
    if tally.checking:
        line += f", {checking(tally)}"
    if tally.failures:
        top = ", ".join(f"{code}×{n}" for code, n in tally.failures.most_common(3))
        line += f" [{top}]"
    if tally.queued:
        held = held_back(tally)
        if held:
            line += f"; held back by {held}"
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
        TextColumn("ETA {task.fields[eta]}"),  # eta_seconds: held workspaces count
        TextColumn("{task.fields[held]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(
            "launch", total=tally.total or None, rate=0.0, failed=0, held="", eta="?", wave=""
        )

        def refresh() -> None:
            elapsed = time.monotonic() - start
            rate = tally.done / elapsed if elapsed > 0 else 0.0
            seconds = eta_seconds(tally, rate)
            held = held_back(tally) if tally.queued else ""
            held = f"held back by {held}" if held else ""
            if tally.checking:
                held = f"{held}, {checking(tally)}" if held else checking(tally)
            bar.update(
                task,
                completed=tally.done,
                rate=rate,
                failed=tally.failed,
                wave=tally.wave,
                eta=f"{seconds:.0f}s" if seconds is not None else "?",
                held=held,
            )

        try:
            while True:
                refresh()
                await anyio.sleep(interval if interval is not None else 0.2)
        finally:
            refresh()  # the bar ends on the final count, not the last tick's
