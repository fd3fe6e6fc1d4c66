"""Several dispatch processes for one run: `launcher run --workers N|auto`.

One Python process tops out at a few thousand signed starts a second, on one
core. At `--rate 0`, or a rate one process cannot reach, the run is split over
worker processes, one per core; at low rates it stays one process, because
then a second process only costs memory and its connections.

Shape:

- the parent validates and plans the manifest exactly as a single process
  does: one validation, and exit 2 before anything is sent;
- it creates one part file per worker next to the ledger, then appends a
  `workers` record naming them (`ledger.open_fleet`);
- worker i of N sends every N-th job from the i-th (cheap to skip; which
  worker sends a job does not matter to resume, since every worker folds
  the whole ledger), with its share of every limit, and writes
  its part like a ledger; it holds a lock on the part while it runs;
- worker 0 is the parent itself (one process fewer); the others are forked
  from it before its event loop starts, with the plan (and a resume's fold of
  the ledger) in hand and every module imported: a worker costs a fork, not
  an interpreter's start-up. They wait until worker 0's canary has been
  answered, so bad credentials cost one rejected request, not one per worker;
- each child has two pipes to the parent: orders (`go`, `stop`) and reports
  (its tallies, then its counts); the parent shows the fleet's progress,
  forwards SIGINT/SIGTERM once per signal it receives (children run in their
  own sessions, so a terminal's Ctrl-C reaches them once, through the
  parent), and stops every worker when one halts (exit 3);
- when all have exited, the parent copies the parts into the ledger
  (`ledger.finish_merge`) and prints the summary read from it.

If the parent dies, the workers see their orders pipe close and stop as on SIGTERM.
`report` and `--resume` read unmerged parts; a resume merges them first.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import orjson

from launcher.config import RunOptions
from launcher.dlf.transport import backend_options
from launcher.errors import EXIT_INTERRUPTED, LauncherError, UsageError
from launcher.flow.dispatch import Dispatcher, Tally
from launcher.flow.policy import parse_halt
from launcher.ledger.history import (
    CountedPart,
    FoldedPart,
    LiveFold,
    catch_up,
    fold_fleet,
    save_fold,
)
from launcher.ledger.report import format_text, summary_of
from launcher.ledger.writer import Ledger, finish_merge, lock_part, open_fleet, part_name
from launcher.logs import bind_log_context, get_logger
from launcher.run.connect import connect
from launcher.run.metrics import serving_metrics
from launcher.run.plan import Plan
from launcher.run.resume import Segment
from launcher.run.segment import RunResult, WorkerRole, run_segment, show_run_progress

__all__ = [
    "AUTO_RATE_PER_WORKER",
    "MIN_JOBS_PER_WORKER",
    "Fleet",
    "choose_workers",
    "fleet_exit_code",
    "share",
    "start_fleet",
    "worker_options",
]

# Starts a second one worker sustains with room to spare on one core
# (benchmarks/RESULTS.md): a rate above it gets another worker under `auto`.
AUTO_RATE_PER_WORKER = 2000.0
# Below this many jobs per worker, another worker (a fork, its connections, and a
# second pass over the manifest) costs more than it saves.
MIN_JOBS_PER_WORKER = 5000
TALLY_PERIOD = 0.25  # seconds between a worker's progress reports

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


# -- the parent ------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    index: int
    pid: int
    orders: int  # our end of the pipe it reads its orders from
    reports: int  # our end of the pipe it writes its tallies, then its counts, to
    tally: list[int]
    failures: Counter[str]
    code: int | None = None
    counts: CountedPart | None = None  # its fold of its part, sent when it is done


class Fleet:
    """One run over `count` workers: worker 0 runs in this process, the others
    are children forked from it by `start_fleet`; `run` is the parent's side."""

    def __init__(
        self,
        plan: Plan,
        options: RunOptions,
        segment: Segment,
        ledger_path: str,
        count: int,
        env: Mapping[str, str],
    ) -> None:
        self.plan, self.options, self.segment = plan, options, segment
        self.ledger_path, self.count, self.env = ledger_path, count, env
        self.fleet = uuid.uuid4().hex
        self.names = [part_name(ledger_path, self.fleet, index) for index in range(count)]
        self.folder = Path(ledger_path).parent
        self.tally = Tally(total=max(0, plan.jobs - segment.already_settled))
        self.children: list[_Child] = []
        self.local: Tally | None = None
        self.dispatcher: Dispatcher | None = None
        self.interrupted = False
        self.released = False
        self.local_fold: FoldedPart | None = None  # worker 0's fold of its part
        # A new run with no two jobs sharing an id: the other workers fold their
        # parts too, and send the counts (their keys would not match ours).
        self.count_parts = (
            segment.history is None
            and not options.allow_duplicates
            and plan.validation.given_ids == 0
        )

    # -- forking (before the event loop) --

    def fork_children(self) -> None:
        """Fork workers 1 to count-1; each waits for its `go` (see `serve`)."""
        sys.stdout.flush()  # else what their buffers hold would be written twice
        sys.stderr.flush()
        try:
            for index in range(1, self.count):
                ends: list[int] = []
                try:
                    ends += os.pipe()  # its orders: in (its end), out (ours)
                    ends += os.pipe()  # its reports: in (ours), out (its end)
                    pid = os.fork()
                except OSError:
                    for fd in ends:
                        os.close(fd)
                    raise
                orders_in, orders_out, reports_in, reports_out = ends
                if pid == 0:
                    # Not its business: our ends of its pipes, and of its elder siblings'.
                    for fd in (orders_out, reports_in, *self.parent_ends()):
                        os.close(fd)
                    self.be_worker(index, orders_in, reports_out)
                os.close(orders_in)
                os.close(reports_out)
                os.set_blocking(orders_out, False)  # an order never waits on a child
                tally = [0] * len(_TALLY_FIELDS)
                self.children.append(_Child(index, pid, orders_out, reports_in, tally, Counter()))
        except OSError as error:  # out of processes or descriptors: nothing was sent
            self.end_children()
            raise UsageError(
                f"cannot start worker processes: {error.strerror or error}; nothing was sent "
                "(--workers 1 runs in one process)"
            ) from None
        except BaseException:
            self.end_children()
            raise

    def parent_ends(self) -> list[int]:
        return [fd for child in self.children for fd in (child.orders, child.reports)]

    def be_worker(self, index: int, orders: int, reports: int) -> NoReturn:
        """A forked child: run worker `index`, then exit without the parent's clean-up."""
        code = 1
        try:
            # Its own session: a terminal's Ctrl-C reaches it once, through the parent.
            os.setsid()
            random.seed()  # not the parent's sequence
            code = anyio.run(
                self.serve, index, _PipeLines(orders), reports, backend_options=backend_options()
            )
        except LauncherError as error:
            sys.stderr.write(f"launcher: error: {error}\n")
            code = error.exit_code
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stderr.flush()
                sys.stdout.flush()
            os._exit(code)

    def end_children(self) -> None:
        """Stop the children still running (this process is failing) and reap every one."""
        for child in self.children:
            if child.code is None:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.kill(child.pid, signal.SIGKILL)
                child.code = _wait(child.pid)
            for fd in (child.orders, child.reports):
                with contextlib.suppress(OSError):  # closed already
                    os.close(fd)
            child.orders = child.reports = -1

    # -- the parent's side, in the event loop --

    def sum_tallies(self) -> None:
        rows = [child.tally for child in self.children]
        failures: Counter[str] = Counter()
        for child in self.children:
            failures.update(child.failures)
        if self.local is not None:
            rows.append(_tally_row(self.local))
            failures.update(self.local.failures)
        tally = self.tally
        for name, column in zip(_TALLY_FIELDS, zip(*rows, strict=True), strict=True):
            setattr(tally, name, sum(column))
        tally.failures = failures

    def tell(self, word: bytes) -> None:
        for child in self.children:
            if child.code is None:
                with contextlib.suppress(OSError):  # it exited meanwhile
                    os.write(child.orders, word + b"\n")

    def release(self, go: bool) -> None:
        """Let the children start (worker 0's canary was answered), or tell them not to."""
        if not self.released:
            self.released = True
            self.tell(b"go" if go else b"stop")

    def halted(self, index: int) -> None:
        log.warning("a worker halted: stopping the others", worker=index)
        if self.dispatcher is not None:
            self.dispatcher.stop("another worker halted")
        self.tell(b"stop")

    def forward(self, signum: int) -> None:
        """Worker 0 got SIGINT/SIGTERM: pass it on, once, to every child."""
        self.interrupted = True
        for child in self.children:
            if child.code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    async def accompany(self, dispatcher: Dispatcher, tally: Tally) -> None:
        """Worker 0's companion: release the children after the canary; keep the sum."""
        self.dispatcher, self.local = dispatcher, tally
        try:
            await dispatcher.canary_answered()
            self.release(not dispatcher.stopping)
            while True:
                self.sum_tallies()
                await anyio.sleep(TALLY_PERIOD)
        finally:
            self.sum_tallies()

    async def watch(self, child: _Child) -> None:
        """Read a child's reports until it exits; then reap it."""
        reports = _PipeLines(child.reports)
        while (line := await reports.next_line()) is not None:
            if line.startswith(_COUNTS_PREFIX):
                child.counts = _read_counts(line, child.index)
                continue
            try:
                message = orjson.loads(line)
                child.tally = list(message["tally"])
                child.failures = Counter(message.get("failures") or {})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("unreadable line from a worker", worker=child.index)
        child.code = await anyio.to_thread.run_sync(_wait, child.pid)
        if child.code == 3:
            self.halted(child.index)

    async def run(self, out: TextIO) -> RunResult:
        """Worker 0's share beside the children's; then the merge, and the summary."""
        options, plan = self.options, self.plan
        local_options = worker_options(options, 0, self.count)
        local_part = str(self.folder / self.names[0])
        local_code: int | None = None
        pending = None
        bounds: list[int] = []
        try:
            # Connect first: if the credentials or the endpoint are refused, the
            # ledger is left as it was, as a single process would leave it.
            async with (
                serving_metrics(options, self.tally),
                connect(local_options, self.env) as connection,
            ):
                pending = open_fleet(
                    self.ledger_path,
                    {
                        "fleet": self.fleet,
                        "t": time.time(),
                        "count": self.count,
                        "parts": self.names,
                        "manifest": {"sha256": plan.validation.sha256, "jobs": plan.jobs},
                        "pid": os.getpid(),
                    },
                )
                log.info("run starting in worker processes", workers=self.count, fleet=self.fleet)
                async with anyio.create_task_group() as tg:
                    if options.progress != "off":
                        tg.start_soon(show_run_progress, self.tally, options)
                    async with anyio.create_task_group() as crew:
                        for child in self.children:
                            crew.start_soon(self.watch, child)
                        role = WorkerRole(
                            0,
                            self.count,
                            self.fleet,
                            self.accompany,
                            on_signal=self.forward,
                            run_options=self.options,
                        )
                        lock = lock_part(local_part)
                        ledger, live = _local_part_ledger(
                            local_part, local_options, self.segment, share(plan.jobs, 0, self.count)
                        )
                        try:
                            local_code = await run_segment(
                                plan, local_options, connection, ledger, self.segment, role,
                                live=live,
                            )  # fmt: skip
                        finally:
                            ledger.close()
                            os.close(lock)
                        if live is not None:
                            self.local_fold = live.part()
                            del live  # its table: the part holds what the merge needs
                        self.release(local_code in (0, 1))
                        if local_code == 3:
                            self.halted(0)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                self.end_children()  # all reaped already, unless this process is failing
                if pending is not None:
                    bounds = await anyio.to_thread.run_sync(finish_merge, self.ledger_path, pending)
        # A resume folded the ledger before the workers record: read only what follows.
        history = self.segment.history
        if history is not None:
            history = catch_up(history)
        else:  # the workers folded their parts as they wrote them
            counts = {child.index: child.counts for child in self.children}
            parts = [self.local_fold, *(counts.get(index) for index in range(1, self.count))]
            history = fold_fleet(self.ledger_path, bounds, parts, disjoint=self.count_parts)
        summary = summary_of(history)
        if summary.outcomes["pending"]:  # name the never-sent jobs' workspaces, as report does
            from launcher.run.reports import add_never_sent  # only a cut-short run needs it

            source = plan.iter_jobs if plan.shard is None else None
            add_never_sent(summary, history, [str(self.ledger_path)], source)
        codes = [local_code if local_code is not None else 1]
        codes += [child.code if child.code is not None else 1 for child in self.children]
        all_started = summary.outcomes["started"] >= plan.jobs
        exit_code = fleet_exit_code(codes, self.interrupted, all_started)
        out.write(format_text(summary) + "\n")
        out.flush()
        save_fold(history)  # for the next --resume or report of this ledger
        log.info("workers finished", exit_codes=codes, exit_code=exit_code)
        return RunResult(exit_code, summary, self.ledger_path)

    # -- a child's side, in its own event loop --

    async def serve(self, index: int, orders: _PipeLines, reports: int) -> int:
        """Be worker `index`: wait for `go`, send its share, report; return its exit code."""
        bind_log_context(worker=f"{index}/{self.count}")  # on every log line
        options = worker_options(self.options, index, self.count)
        word = await orders.next_line()
        if word != b"go":  # worker 0 failed, or the parent went away: send nothing
            return EXIT_INTERRUPTED if word is None else 0
        part = str(self.folder / self.names[index])
        lock = lock_part(part)  # held while it writes: a merge waits for it
        try:
            async with connect(options, self.env) as connection:
                folds = self.count_parts
                ledger = Ledger(part, fsync=options.fsync, mirror=folds)
                live = LiveFold(ledger, share(self.plan.jobs, index, self.count)) if folds else None
                try:
                    role = WorkerRole(
                        index,
                        self.count,
                        self.fleet,
                        _companion(orders, reports),
                        run_options=self.options,
                    )
                    code = await run_segment(
                        self.plan, options, connection, ledger, self.segment, role, live=live
                    )
                finally:
                    ledger.close()
        finally:
            os.close(lock)
        counts = live.counts() if live is not None else None
        if counts is not None:
            _send_counts(reports, counts)
        return code


def start_fleet(
    plan: Plan,
    options: RunOptions,
    segment: Segment,
    ledger_path: str,
    count: int,
    env: Mapping[str, str],
) -> Fleet:
    """Fork the workers of a run of `plan` over `count` processes (this one and
    count-1 children); `await fleet.run(out)` then runs it, merges the workers'
    ledgers into `ledger_path` and prints the summary.

    Call it before the event loop starts, from a process with one thread: a
    fork then copies nothing that could be half-way through a change.
    """
    fleet = Fleet(plan, options, segment, ledger_path, count, env)
    fleet.fork_children()
    return fleet


# The counters a child reports and the parent sums, in this order.
_TALLY_FIELDS = ("done", "started", "failed", "unknown", "attempts", "in_flight", "throttled")


def _tally_row(tally: Tally) -> list[int]:
    return [getattr(tally, name) for name in _TALLY_FIELDS]


def _wait(pid: int) -> int:
    """Reap child `pid`: its exit code (minus the signal's number when one killed it)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class _PipeLines:
    """The lines of a pipe, read in the event loop; None once its writer closed it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        os.set_blocking(fd, False)

    async def next_line(self) -> bytes | None:
        """The next line without its newline, or None at end of file."""
        while b"\n" not in self._buffer:
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.strip()


def _local_part_ledger(
    path: str, options: RunOptions, segment: Segment, jobs: int
) -> tuple[Ledger, LiveFold | None]:
    """Worker 0's part ledger, and for a new run its fold as it is written.

    It runs in the parent, so its fold is merged job by job (keys are string
    hashes of this process's seed); the other workers' come as counts.
    """
    fresh = segment.history is None
    ledger = Ledger(path, fsync=options.fsync, mirror=fresh)
    return ledger, LiveFold(ledger, jobs) if fresh else None


# A child's last report: the counts of its part (`CountedPart`), as JSON.
_COUNTS_PREFIX = b"C"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError):  # the parent is gone: the orders pipe tells us
        while view:
            view = view[os.write(fd, view) :]


def _send_counts(reports: int, counts: CountedPart) -> None:
    _write_all(reports, _COUNTS_PREFIX + counts.to_json() + b"\n")


def _read_counts(line: bytes, index: int) -> CountedPart | None:
    try:
        return CountedPart.from_json(line[len(_COUNTS_PREFIX) :])
    except (ValueError, KeyError, TypeError):  # (JSON and base64 errors are ValueErrors)
        log.warning("unreadable counts from a worker: reading its part instead", worker=index)
        return None


def _tally_message(tally: Tally) -> bytes:
    message = {"tally": _tally_row(tally), "failures": dict(tally.failures.most_common(5))}
    return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)


def _companion(
    orders: _PipeLines, reports: int
) -> Callable[[Dispatcher, Tally], Coroutine[Any, Any, None]]:
    async def accompany(dispatcher: Dispatcher, tally: Tally) -> None:
        """Report the tally to the parent; obey its orders."""

        async def report() -> None:
            while True:
                _write_all(reports, _tally_message(tally))
                await anyio.sleep(TALLY_PERIOD)

        async def obey() -> None:
            while True:
                line = await orders.next_line()
                if line is None:  # the parent died: stop as a SIGTERM would
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                if line == b"stop":
                    dispatcher.stop("another worker halted")

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(report)
                tg.start_soon(obey)
        finally:
            _write_all(reports, _tally_message(tally))

    return accompany
