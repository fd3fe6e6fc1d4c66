"""How a run splits over dispatch processes: how many, and each one's share.

Pure sizing, no processes (those are `launcher.run.fleet`'s): how many workers
a run uses (`choose_workers`), worker i's share of every limit
(`worker_options`; shares of a bound sum exactly to the bound), and the run's
exit code from its workers' (`fleet_exit_code`). Tested in tests/run/test_fleet.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from launcher.config import RunOptions
from launcher.errors import EXIT_INTERRUPTED
from launcher.flow.policy import parse_halt
from launcher.logs import get_logger

__all__ = [
    "AUTO_RATE_PER_WORKER",
    "MIN_JOBS_PER_WORKER",
    "choose_workers",
    "fleet_exit_code",
    "share",
    "usable_cpus",
    "worker_options",
]

# Starts a second one worker sustains with room to spare on one core
# (benchmarks/RESULTS.md): a rate above it gets another worker under `auto`.
AUTO_RATE_PER_WORKER = 2000.0
# Below this many jobs per worker, another worker (a fork, its connections, and a
# second pass over the manifest) costs more than it saves.
MIN_JOBS_PER_WORKER = 5000

log = get_logger("launcher.run.fleet")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_workers(options: RunOptions, jobs: int, cpus: int) -> int:
    """How many dispatch processes a run of `jobs` unsettled jobs uses.

    `--workers N` asks for N, at most one per usable CPU (`cpus`; a warning
    says so); `auto` (0) takes every CPU at `--rate 0`, and at
    a rate one process cannot sustain as many as that rate needs; small runs
    stay in one process. Either way the count never exceeds the smallest
    concurrency bound, so that every bound splits into whole, non-zero shares
    whose sum is exactly the bound, and the embedded simulator (which lives in
    this process) keeps the run in one process.
    """
    if options.dry_run or options.endpoint == "sim":
        return 1
    if options.workers:
        # More processes than cores only contend for them (and each costs memory
        # and connections): --workers 100000 on 2 cores runs 2.
        wanted = min(options.workers, cpus)
        if wanted < options.workers:
            log.warning("--workers capped at the usable cores", asked=options.workers, cores=cpus)
    else:
        if options.rate > 0:
            wanted = min(cpus, math.ceil(options.rate / AUTO_RATE_PER_WORKER))
        else:
            wanted = cpus
        wanted = min(wanted, jobs // MIN_JOBS_PER_WORKER)
    bounds = [options.concurrency, jobs]
    if options.per_workspace:
        bounds.append(options.per_workspace)
    bounds.extend(concurrency for concurrency, _, _ in options.workspaces.values() if concurrency)
    return max(1, min(wanted, *bounds))


def share(total: int, index: int, count: int) -> int:
    """Worker `index`'s whole share of `total` split `count` ways (the shares sum to `total`)."""
    return total // count + (1 if index < total % count else 0)


def worker_options(options: RunOptions, index: int, count: int) -> RunOptions:
    """The options of worker `index` of `count`: its share of every limit.

    Concurrency bounds split into whole shares that sum to the bound; rates
    split evenly. A Redis-shared limit already accounts for every process on
    its key, so it is not split. A `fail=N` halt gives each worker N/count
    (rounded up): the parent stops them all when one halts.
    """
    shared = bool(options.redis)
    rate = options.rate / count if options.rate and not shared else options.rate
    halt = options.halt
    rule = parse_halt(halt) if halt is not None else None
    if rule is not None and rule.count is not None:
        halt = f"fail={math.ceil(rule.count / count)}"
    budget = options.retry_budget
    return replace(
        options,
        workers=1,
        concurrency=share(options.concurrency, index, count),
        per_workspace=share(options.per_workspace, index, count) if options.per_workspace else 0,
        rate=rate,
        halt=halt,
        retry_budget=max(1, math.ceil(budget / count)) if budget else 0,
        canary=options.canary and index == 0,
        progress="off",
        workspaces={
            workspace: (
                share(concurrency, index, count) if concurrency else 0,
                limit / count if limit and not shared else limit,
                burst,
            )
            for workspace, (concurrency, limit, burst) in options.workspaces.items()
        },
    )


def fleet_exit_code(codes: list[int], interrupted: bool, all_started: bool) -> int:
    """The run's exit code from its workers' (see interface.md's table).

    Bad usage anywhere (2) wins, then a safety stop (3), then an interruption
    (130); otherwise the merged ledger decides: 0 when every job started.
    """
    if 2 in codes:
        return 2
    if 3 in codes:
        return 3
    if interrupted or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return 0 if all_started else 1
