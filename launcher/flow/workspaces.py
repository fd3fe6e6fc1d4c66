"""Per-workspace queues: a job waiting for its workspace's limit holds back no other.

With per-workspace limits (`--per-workspace`, `[workspaces."ID"]`) the
dispatcher's workers pull through `WorkspaceQueues.next_ready` instead of the
manifest iterator: it hands out the next job whose workspace may send now. A
job whose workspace is at its rate or in-flight limit waits in that
workspace's queue (FIFO) while the reader goes on, so a slow workspace at the
head of a manifest does not hold back the others (no head-of-line blocking).
The queues together hold at most `look_ahead` jobs: memory stays bounded, and
once they are full the workers wait for the first workspace that may send.

Invariants (tests/flow/test_dispatch.py, the property test of per-workspace
queues, and tests/run/test_head_of_line.py): every job is handed out exactly
once; each workspace keeps its manifest order; the queues are empty when the
source is exhausted and `next_ready` returned None.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import anyio

from launcher.flow.pacing import Pacer, TokenBucket, format_rate
from launcher.models import Job

__all__ = ["Gate", "WorkspaceLimits", "WorkspaceQueues"]


@dataclass(frozen=True, slots=True)
class WorkspaceLimits:
    """Limits for one workspace on top of the global ones (0: no limit of that kind)."""

    concurrency: int = 0
    rate: float = 0.0
    burst: int = 1


@dataclass(frozen=True, slots=True)
class Gate:
    """A workspace's own limits: its in-flight cap and its pacer (None: none of that kind)."""

    limiter: anyio.CapacityLimiter | None
    pacer: Pacer | None


class WorkspaceQueues:
    """The workspaces' gates and the jobs read ahead of their workspace's limit.

    `queued` and `limits` are the run's live counters (the progress line reads
    them): jobs queued by workspace, and each limited workspace's limit as
    (description, rate or 0.0).
    """

    def __init__(
        self,
        per_workspace: int,
        workspaces: Mapping[str, WorkspaceLimits],
        look_ahead: int,
        clock: Callable[[], float],
        queued: Counter[str | None],
        limits: dict[str | None, tuple[str, float]],
    ) -> None:
        self._per_workspace = per_workspace
        self._workspaces = workspaces
        self._look_ahead = look_ahead
        self._clock = clock
        self._counts = queued
        self._limits = limits
        self._gates: dict[str | None, Gate] = {}
        # Jobs read ahead of their workspace's limit, by workspace (only non-empty queues).
        self._queues: dict[str | None, deque[Job]] = {}
        self._queued = 0
        self._exhausted = False  # the source has no job left
        self._stopped = False
        self._freed = anyio.Event()  # set (and replaced) when a workspace slot frees up

    def gate(self, workspace: str | None) -> Gate:
        """The gate of `workspace`, made on first use (and its limit described)."""
        gate = self._gates.get(workspace)
        if gate is None:
            limits = self._workspaces.get(workspace or "", WorkspaceLimits())
            concurrency = limits.concurrency or self._per_workspace
            gate = Gate(
                anyio.CapacityLimiter(concurrency) if concurrency > 0 else None,
                Pacer(TokenBucket(limits.rate, limits.burst), self._clock)
                if limits.rate > 0
                else None,
            )
            self._gates[workspace] = gate
            described = [format_rate(limits.rate)] if limits.rate > 0 else []
            if concurrency > 0:
                described.append(f"{concurrency} in flight")
            if described:
                self._limits[workspace] = (", ".join(described), limits.rate)
        return gate

    @staticmethod
    def _may_send(gate: Gate, now: float) -> bool:
        """Whether a job of the workspace of `gate` could be sent now without waiting."""
        limiter, pacer = gate.limiter, gate.pacer
        return (limiter is None or limiter.available_tokens >= 1) and (
            pacer is None or pacer.bucket.ready_in(now) <= 0.0
        )

    async def next_ready(self, source: Iterator[Job]) -> Job | None:
        """The next job whose workspace may send now.

        Queued jobs first, their workspace's oldest; else read on, queueing
        jobs whose workspace is at its limit (or has jobs queued already: each
        workspace keeps its manifest order), up to `look_ahead` queued jobs;
        else wait for the first workspace to free up. None: no job is left
        (or the run stopped).
        """
        queues = self._queues
        counts = self._counts
        gate_of = self.gate
        may_send = self._may_send
        while not self._stopped:
            now = self._clock()
            for workspace, queue in queues.items():
                if may_send(gate_of(workspace), now):
                    job = queue.popleft()
                    self._queued -= 1
                    counts[workspace] -= 1
                    if not queue:
                        del queues[workspace]  # (the loop ends here: no iteration after)
                        del counts[workspace]
                    return job
            if not self._exhausted and self._queued < self._look_ahead:
                read = next(source, None)
                if read is None:
                    self._exhausted = True
                    continue
                workspace = read.workspace
                if workspace not in queues and may_send(gate_of(workspace), now):
                    return read
                line = queues.get(workspace)
                if line is None:
                    line = queues[workspace] = deque()
                line.append(read)
                self._queued += 1
                counts[workspace] += 1
                continue
            if not queues:
                return None
            await self._wait_for_a_workspace(now)
        return None

    async def _wait_for_a_workspace(self, now: float) -> None:
        """Sleep until a queued workspace's rate allows a send, or any slot frees up."""
        delay = math.inf  # every queued workspace is at its in-flight limit: wait for a slot
        for workspace in self._queues:
            gate = self._gates[workspace]
            if gate.limiter is None or gate.limiter.available_tokens >= 1:
                wait = gate.pacer.bucket.ready_in(now) if gate.pacer is not None else 0.0
                delay = min(delay, wait)
        freed = self._freed
        with anyio.move_on_after(delay):
            await freed.wait()

    def slot_freed(self) -> None:
        """A workspace's in-flight slot is free: its queue may go."""
        if self._queues:
            self._wake()

    def stop(self) -> None:
        """No job is handed out any more; the workers waiting for a workspace return."""
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        freed = self._freed
        self._freed = anyio.Event()
        freed.set()
