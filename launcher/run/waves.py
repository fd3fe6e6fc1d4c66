"""Waves: the jobs of wave k+1 are sent only once every job of waves <= k is settled.

A manifest's `wave` field (default 0) orders a run: dimension loads before
fact loads, upstream before downstream. `Waves.run` sends one wave at a time
through the same dispatcher (same limits, same ledger), with one pass over the
manifest per wave, so memory does not grow with the manifest: it keeps the
wave numbers and their job counts that the validation collected, nothing per
job. The dispatcher returns from a wave only when each of its jobs has a final
outcome (or the run stopped).

The gate between waves is `wave_gate`, a pure function: by default a wave in
which any job did not start (failed, unknown, or left pending) stops the run
before the next wave (`stop_reason` "wave"; exit 1; the later waves' jobs stay
pending and a `--resume` continues). `--wave-failures continue` goes on.

A resume judges a wave by all its jobs, earlier segments' included: a job
that failed for good in an earlier segment is skipped, as in any resume, but
still closes its wave's gate (unless `--retry-failed` sends it again and it
starts, or `--wave-failures continue`).

Each segment's footer records the waves it saw (`summary`): the report shows
the latest segment's. Waves do not cross processes: `--shard` runs order
their own share, and a manifest with more than one wave runs in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from launcher.flow.dispatch import Dispatcher
from launcher.flow.waiting import is_final, run_failed
from launcher.ledger.history import History
from launcher.ledger.instances import InstanceFold
from launcher.logs import get_logger
from launcher.models import Job
from launcher.run.resume import Next, Segment, step_lookup
from launcher.run.wait import Waiter

__all__ = ["WaveCount", "Waves", "has_waves", "wave_gate"]

log = get_logger("launcher.run")

WaveFailures = Literal["stop", "continue"]


def has_waves(waves: Mapping[int, int] | None) -> bool:
    """Whether a manifest's wave counts (`Validation.waves`) make more than one wave."""
    return waves is not None and len(waves) > 1


def wave_gate(count: WaveCount, policy: WaveFailures) -> bool:
    """Whether the next wave may start after this one: all its jobs started, or `continue`."""
    return policy == "continue" or (
        count.complete and count.started == count.jobs and count.runs_failed == 0
    )


@dataclass(slots=True)
class WaveCount:
    """One wave's jobs by final outcome (this segment's and earlier ones')."""

    wave: int
    jobs: int = 0  # jobs of the wave this process handles (seen in its pass)
    started: int = 0
    failed: int = 0
    unknown: int = 0
    complete: bool = False  # every job of the wave was taken (the run did not stop in it)
    runs_failed: int = 0  # --wait: started runs that ended other than a success
    state: str = "not reached"  # "not reached", "sent", "stopped"

    @property
    def pending(self) -> int:
        return max(0, self.jobs - self.started - self.failed - self.unknown)

    def as_json(self) -> dict[str, Any]:
        return {
            "wave": self.wave,
            "state": self.state,
            "jobs": self.jobs,
            "started": self.started,
            "failed": self.failed,
            "unknown": self.unknown,
            "pending": self.pending,
            "runs_failed": self.runs_failed,
        }


@dataclass(slots=True)
class Waves:
    """Sends `jobs(share)` wave by wave through a dispatcher (see the module docstring).

    `jobs` streams the run's jobs in manifest order (called once per wave);
    `counts` are the validation's jobs per wave (for waves never reached, when
    exact: not under `--shard`).
    """

    jobs: Callable[[], Iterable[Job]]
    counts: Mapping[int, int]
    segment: Segment
    retry_failed: bool
    policy: WaveFailures
    exact_counts: bool = True
    shard: str | None = None  # --shard: the report adds up the shards' waves
    waiter: Waiter | None = None  # --wait: a wave ends when its runs have ended
    instances: InstanceFold | None = None  # --wait on a resume: earlier segments' runs
    seen: dict[int, WaveCount] = field(default_factory=dict)

    async def run(self, dispatcher: Dispatcher) -> None:
        """Send every wave in order; stop before the next one when the gate says so."""
        tally = dispatcher.tally
        numbers = sorted(self.counts)
        for index, wave in enumerate(numbers):
            if dispatcher.stopping:
                break
            tally.wave = f"wave {index + 1}/{len(numbers)} (#{wave})"
            count = self.seen[wave] = WaveCount(wave, state="sent")
            before = (tally.started, tally.failed, tally.unknown)
            runs_failed = self.waiter.failed if self.waiter is not None else 0
            await dispatcher.run(self._wave_jobs(wave, count))
            if self.waiter is not None:
                await self.waiter.idle()
                count.runs_failed += self.waiter.failed - runs_failed
            count.started += tally.started - before[0]
            count.failed += tally.failed - before[1]
            count.unknown += tally.unknown - before[2]
            count.complete = not dispatcher.stopping
            if not count.complete:
                count.state = "stopped"
            log.info("wave done", **count.as_json())
            if count.complete and not wave_gate(count, self.policy):
                log.warning(
                    "wave had failures: later waves not sent (--wave-failures continue "
                    "sends them anyway; --resume continues)",
                    wave=wave,
                    failed=count.failed,
                    unknown=count.unknown,
                    pending=count.pending,
                )
                dispatcher.stop("wave")

    def summary(self) -> dict[str, Any]:
        """Every wave's counts, for the segment's footer (waves not reached: their size)."""
        waves = []
        for wave in sorted(self.counts):
            count = self.seen.get(wave)
            if count is None:
                count = WaveCount(wave, jobs=self.counts[wave] if self.exact_counts else 0)
            waves.append(count.as_json())
        return {"policy": self.policy, "shard": self.shard, "waves": waves}

    @staticmethod
    def _run_failed(instances: InstanceFold, job_id: str) -> bool:
        status = instances.status(job_id)
        return is_final(status) and run_failed(status)

    def _wave_jobs(self, wave: int, count: WaveCount) -> Iterator[Job]:
        """The wave's jobs to send; settled ones (a resume's) are counted, not sent."""
        history = self.segment.history
        outcome = _outcome_lookup(history, self.retry_failed) if history is not None else None
        for job in self.jobs():
            if job.wave != wave:
                continue
            count.jobs += 1
            if outcome is not None:
                settled = outcome(job.id)
                if settled is not None:
                    if settled == "started":
                        count.started += 1
                        instances = self.instances
                        if instances is not None and self._run_failed(instances, job.id):
                            count.runs_failed += 1
                    else:
                        count.failed += 1
                    continue
            yield job


def _outcome_lookup(history: History, retry_failed: bool) -> Callable[[str], str | None]:
    """A resumed job's outcome when the resume skips it (started, failed for good), else None."""
    step = step_lookup(history, retry_failed=retry_failed)
    decoded: dict[int, str | None] = {}

    def outcome(job_id: str) -> str | None:
        if step(job_id) is not Next.SKIP:
            return None
        packed = history.state(job_id)
        found = decoded.get(packed)
        if found is None:
            found = decoded[packed] = history.decode(packed).final
        return found

    return outcome
