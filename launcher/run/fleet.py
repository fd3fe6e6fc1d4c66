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
How many workers a run uses and each one's share of its limits are
`launcher.run.shares`' (pure sizing).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import orjson

from launcher.config import RunOptions
from launcher.dlf.transport import backend_options
from launcher.errors import EXIT_INTERRUPTED, LauncherError, UsageError
from launcher.flow.dispatch import Dispatcher, Tally
from launcher.ledger import (
    CountedPart,
    FoldedPart,
    Ledger,
    LiveFold,
    catch_up,
    finish_merge,
    fold_fleet,
    lock_part,
    open_fleet,
    part_name,
    save_fold,
    write_all,
)
from launcher.ledger.report import format_text, summary_of
from launcher.logs import bind_log_context, get_logger
from launcher.run.connect import connect
from launcher.run.metrics import serving_metrics
from launcher.run.plan import Plan
from launcher.run.resume import Segment
from launcher.run.segment import RunResult, WorkerRole, run_segment, show_run_progress
from launcher.run.shares import (
    AUTO_RATE_PER_WORKER,
    MIN_JOBS_PER_WORKER,
    choose_workers,
    fleet_exit_code,
    share,
    worker_options,
)

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

TALLY_PERIOD = 0.25  # seconds between a worker's progress reports

log = get_logger("launcher.run.fleet")


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
_TALLY_FIELDS = (
    "done", "started", "failed", "unknown", "attempts", "in_flight", "throttled", "checking"
)  # fmt: skip


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


def _tell_parent(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: the orders pipe tells us
        write_all(fd, data)


def _send_counts(reports: int, counts: CountedPart) -> None:
    _tell_parent(reports, _COUNTS_PREFIX + counts.to_json() + b"\n")


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
                _tell_parent(reports, _tally_message(tally))
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
            _tell_parent(reports, _tally_message(tally))

    return accompany
