"""Several dispatch processes for one run: `launcher run --workers N|auto`.

One Python process tops out at a few thousand signed starts a second, on one
core. At `--rate 0`, or a rate one process cannot reach, the run is split over
worker processes, one per core; at low rates it stays one process, because
then a second interpreter only costs memory and start-up time.

Shape:

- the parent validates and plans the manifest exactly as a single process
  does: one validation, and exit 2 before anything is sent;
- it creates one part file per worker next to the ledger, then appends a
  `workers` record naming them (`ledger.open_fleet`);
- worker i of N sends every N-th job from the i-th (cheap to skip; which
  worker sends a job does not matter to resume, since every worker folds
  the whole ledger), with its share of every limit, and writes
  its part like a ledger; it holds a lock on the part while it runs;
- worker 0 is the parent itself (one interpreter fewer); the others start
  while it connects and wait until its canary has been answered, so bad
  credentials cost one rejected request, not one per worker;
- the parent shows the fleet's progress (children report their tallies on
  stdout), forwards SIGINT/SIGTERM once per signal it receives (children run
  in their own sessions, so a terminal's Ctrl-C reaches them once, through
  the parent), and stops every worker when one halts (exit 3);
- when all have exited, the parent copies the parts into the ledger
  (`ledger.finish_merge`) and prints the summary read from it.

If the parent dies, the workers see their stdin close and stop as on SIGTERM.
`report` and `--resume` read unmerged parts; a resume merges them first.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TextIO

import anyio
import orjson
from anyio.abc import Process

from launcher.config import RunOptions
from launcher.connect import connect
from launcher.dispatch import Dispatcher, Tally
from launcher.errors import LauncherError
from launcher.history import (
    CountedPart,
    FoldedPart,
    LiveFold,
    catch_up,
    fold,
    fold_fleet,
    save_fold,
)
from launcher.ledger import (
    Ledger,
    finish_merge,
    lock_part,
    open_fleet,
    part_name,
    read_ledger,
)
from launcher.logs import bind_log_context, configure_logging, get_logger
from launcher.manifest import Defaults, Validation
from launcher.plan import parse_shard
from launcher.policy import parse_halt
from launcher.report import format_text, summary_of
from launcher.runner import (
    EXIT_INTERRUPTED,
    Plan,
    RunResult,
    Segment,
    WorkerRole,
    plan_segment,
)
from launcher.runner import _dispatch as dispatch
from launcher.runner import _progress as show_fleet_progress
from launcher.transport import backend_options

__all__ = [
    "AUTO_RATE_PER_WORKER",
    "MIN_JOBS_PER_WORKER",
    "ParentPipe",
    "choose_workers",
    "fleet_exit_code",
    "run_fleet",
    "serve_worker",
    "share",
    "worker_options",
]

# Starts a second one worker sustains with room to spare on one core
# (benchmarks/RESULTS.md): a rate above it gets another worker under `auto`.
AUTO_RATE_PER_WORKER = 2000.0
# Below this many jobs per worker, another interpreter's start-up (~0.3 s of
# imports, and a second pass over the manifest) costs more than it saves.
MIN_JOBS_PER_WORKER = 5000
TALLY_PERIOD = 0.25  # seconds between a worker's progress reports

log = get_logger("launcher.fleet")

# A child imports this very package, wherever it was imported from: `-P` keeps the
# working directory off its path, and the folder holding `launcher/` goes first
# unless the path already has it (an install, PYTHONPATH).
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# It starts at `worker_main`, not the CLI: click and the CLI's modules are ~20 ms of
# imports each child would pay for nothing.
_CHILD_BOOT = (
    "import sys; root = sys.argv.pop(1); "
    "sys.path.insert(0, root) if root not in sys.path else None; "
    "from launcher.fleet import worker_main; worker_main()"
)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_workers(options: RunOptions, jobs: int, cpus: int) -> int:
    """How many dispatch processes a run of `jobs` unsettled jobs uses.

    `--workers N` asks for N; `auto` (0) takes every CPU at `--rate 0`, and at
    a rate one process cannot sustain as many as that rate needs; small runs
    stay in one process. Either way the count never exceeds the smallest
    concurrency bound, so that every bound splits into whole, non-zero shares
    whose sum is exactly the bound, and the embedded simulator (which lives in
    this process) keeps the run in one process.
    """
    if options.dry_run or options.endpoint == "sim":
        return 1
    if options.workers:
        wanted = options.workers
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
    process: Process
    tally: list[int]
    failures: Counter[str]
    code: int | None = None
    counts: CountedPart | None = None  # its fold of its part, sent when it is done


class _Fleet:
    """The parent's side of a run over `count` workers: worker 0 runs in this
    process (one interpreter fewer: its memory and start-up), the others are
    children that wait for worker 0's canary."""

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

    async def tell(self, word: bytes) -> None:
        for child in self.children:
            if child.code is None:
                with contextlib.suppress(
                    anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):  # it exited meanwhile
                    await child.process.stdin.send(word + b"\n")  # type: ignore[union-attr]

    async def release(self, go: bool) -> None:
        """Let the children start (worker 0's canary was answered), or tell them not to."""
        if not self.released:
            self.released = True
            await self.tell(b"go" if go else b"stop")

    async def halted(self, index: int) -> None:
        log.warning("a worker halted: stopping the others", worker=index)
        if self.dispatcher is not None:
            self.dispatcher.stop("another worker halted")
        await self.tell(b"stop")

    def forward(self, signum: int) -> None:
        """Worker 0 got SIGINT/SIGTERM: pass it on, once, to every child."""
        self.interrupted = True
        for child in self.children:
            if child.code is None:
                child.process.send_signal(signal.Signals(signum))

    async def accompany(self, dispatcher: Dispatcher, tally: Tally) -> None:
        """Worker 0's companion: release the children after the canary; keep the sum."""
        self.dispatcher, self.local = dispatcher, tally
        try:
            await dispatcher.canary_answered()
            await self.release(not dispatcher.stopping)
            while True:
                self.sum_tallies()
                await anyio.sleep(TALLY_PERIOD)
        finally:
            self.sum_tallies()

    async def spawn(self, index: int, history_end: int | None) -> _Child:
        spec = {
            "manifest": self.plan.manifest,
            "options": _options_to_json(worker_options(self.options, index, self.count)),
            "validation": [self.plan.validation.jobs, self.plan.validation.sha256],
            "jobs": self.plan.jobs,
            "index": index,
            "count": self.count,
            "fleet": self.fleet,
            "ledger": self.ledger_path,
            "part": str(self.folder / self.names[index]),
            "history_end": history_end,
            "fold": self.count_parts,
        }
        process = await anyio.open_process(
            [sys.executable, "-P", "-c", _CHILD_BOOT, _PACKAGE_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # its logs go where ours go
            # Its own session: a terminal's Ctrl-C reaches it once, through us.
            start_new_session=True,
        )
        assert process.stdin is not None
        await process.stdin.send(orjson.dumps(spec) + b"\n")
        child = _Child(index, process, [0] * len(_TALLY_FIELDS), Counter())
        self.children.append(child)
        return child

    async def watch(self, child: _Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        buffer = b""
        async for chunk in stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(_COUNTS_PREFIX):
                    child.counts = _read_counts(line, child.index)
                    continue
                try:
                    message = orjson.loads(line)
                    child.tally = list(message["tally"])
                    child.failures = Counter(message.get("failures") or {})
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("unreadable line from a worker", worker=child.index)
        child.code = await child.process.wait()
        if child.code == 3:
            await self.halted(child.index)

    async def run(self, out: TextIO) -> RunResult:
        options, plan = self.options, self.plan
        local_options = worker_options(options, 0, self.count)
        local_part = str(self.folder / self.names[0])
        history_end = _size(self.ledger_path) if self.segment.history is not None else None
        local_code: int | None = None
        # Connect first: if the credentials or the endpoint are refused, the
        # ledger is left as it was, as a single process would leave it.
        async with connect(local_options, self.env) as connection:
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
            try:
                async with anyio.create_task_group() as tg:
                    if options.progress != "off":
                        tg.start_soon(show_fleet_progress, self.tally, options)
                    async with anyio.create_task_group() as crew:
                        for index in range(1, self.count):
                            crew.start_soon(self.watch, await self.spawn(index, history_end))
                        role = WorkerRole(
                            0, self.count, self.fleet, self.accompany, on_signal=self.forward
                        )
                        lock = lock_part(local_part)
                        ledger, live = _local_part_ledger(
                            local_part, local_options, self.segment, share(plan.jobs, 0, self.count)
                        )
                        try:
                            local_code = await dispatch(
                                plan, local_options, connection, ledger, self.segment, role,
                                live=live,
                            )  # fmt: skip
                        finally:
                            ledger.close()
                            os.close(lock)
                        if live is not None:
                            self.local_fold = live.part()
                            del live  # its table: the part holds what the merge needs
                        await self.release(local_code in (0, 1))
                        if local_code == 3:
                            await self.halted(0)
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    for child in self.children:
                        if child.code is None:  # only when this process is failing
                            child.process.kill()
                            child.code = await child.process.wait()
                        await child.process.aclose()
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
        codes = [local_code if local_code is not None else 1]
        codes += [child.code if child.code is not None else 1 for child in self.children]
        all_started = summary.outcomes["started"] >= plan.jobs
        exit_code = fleet_exit_code(codes, self.interrupted, all_started)
        out.write(format_text(summary) + "\n")
        out.flush()
        save_fold(history)  # for the next --resume or report of this ledger
        log.info("workers finished", exit_codes=codes, exit_code=exit_code)
        return RunResult(exit_code, summary, self.ledger_path)


# The counters a child reports and the parent sums, in this order.
_TALLY_FIELDS = ("done", "started", "failed", "unknown", "attempts", "in_flight", "throttled")


def _tally_row(tally: Tally) -> list[int]:
    return [getattr(tally, name) for name in _TALLY_FIELDS]


async def run_fleet(
    plan: Plan,
    options: RunOptions,
    segment: Segment,
    ledger_path: str,
    count: int,
    env: Mapping[str, str],
    out: TextIO,
) -> RunResult:
    """Run `plan` over `count` workers (this process and count-1 children); merge
    their ledgers into `ledger_path`; print the summary."""
    return await _Fleet(plan, options, segment, ledger_path, count, env).run(out)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _options_to_json(options: RunOptions) -> dict[str, Any]:
    # The whole options, the Redis password included: they travel over a pipe
    # to a child, never through its command line or environment.
    return {f.name: getattr(options, f.name) for f in fields(options)}


def _options_from_json(values: Mapping[str, Any]) -> RunOptions:
    workspaces = {
        workspace: (int(limits[0]), float(limits[1]), int(limits[2]))
        for workspace, limits in (values.get("workspaces") or {}).items()
    }
    return RunOptions(**{**values, "workspaces": workspaces})


# -- a worker --------------------------------------------------------------------


class ParentPipe:
    """Lines from the parent on stdin (`go`, `stop`); None once it closed (the parent died)."""

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._buffer = b""

    def first_line(self) -> bytes:
        """The spec, read before the event loop starts (blocking; what follows stays here)."""
        while b"\n" not in self._buffer:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        os.set_blocking(self._fd, False)
        return line

    async def next_line(self) -> bytes | None:
        """The next line without its newline, or None at end of file."""
        while b"\n" not in self._buffer:
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.strip()


def _tell_parent(message: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the parent is gone; the pipe watcher stops us
        os.write(1, orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE))


def _local_part_ledger(
    path: str, options: RunOptions, segment: Segment, jobs: int
) -> tuple[Ledger, LiveFold | None]:
    """Worker 0's part ledger, and for a new run its fold as it is written.

    It runs in the parent, so its fold is merged job by job (keys are string
    hashes of this process's seed); the other workers' come as counts.
    """
    fresh = segment.history is None
    ledger = Ledger(path, fsync=options.fsync, mirror=fresh)  # type: ignore[arg-type]
    return ledger, LiveFold(ledger, jobs) if fresh else None


# A child's last line to its parent: the counts of its part (`CountedPart`), as JSON.
_COUNTS_PREFIX = b"C"


def _send_counts(counts: CountedPart) -> None:
    view = memoryview(_COUNTS_PREFIX + counts.to_json() + b"\n")
    with contextlib.suppress(OSError):  # the parent is gone: it needs no counts
        while view:
            view = view[os.write(1, view) :]


def _read_counts(line: bytes, index: int) -> CountedPart | None:
    try:
        return CountedPart.from_json(line[len(_COUNTS_PREFIX) :])
    except (ValueError, KeyError, TypeError):  # (JSON and base64 errors are ValueErrors)
        log.warning("unreadable counts from a worker: reading its part instead", worker=index)
        return None


def _tally_message(tally: Tally) -> dict[str, Any]:
    return {"tally": _tally_row(tally), "failures": dict(tally.failures.most_common(5))}


def _companion(pipe: ParentPipe) -> Callable[[Dispatcher, Tally], Coroutine[Any, Any, None]]:
    async def accompany(dispatcher: Dispatcher, tally: Tally) -> None:
        """Report the tally to the parent; obey its orders."""

        async def report() -> None:
            while True:
                _tell_parent(_tally_message(tally))
                await anyio.sleep(TALLY_PERIOD)

        async def obey() -> None:
            while True:
                line = await pipe.next_line()
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
            _tell_parent(_tally_message(tally))

    return accompany


def worker_main() -> None:
    """A child's entry point: be the worker its spec (the first line on stdin) describes."""
    try:
        pipe = ParentPipe(sys.stdin.fileno())
        spec = orjson.loads(pipe.first_line())
        options = spec["options"]
        configure_logging(options["log_format"], options["log_level"])
        exit_code = anyio.run(
            serve_worker, spec, dict(os.environ), pipe, backend_options=backend_options()
        )
    except LauncherError as error:
        sys.stderr.write(f"launcher: error: {error}\n")
        sys.exit(error.exit_code)
    sys.exit(exit_code)


async def serve_worker(spec: Mapping[str, Any], env: Mapping[str, str], pipe: ParentPipe) -> int:
    """Be worker `spec["index"]` of a fleet (see the module docstring); return the exit code."""
    options = _options_from_json(spec["options"])
    manifest = str(spec["manifest"])
    index, count = int(spec["index"]), int(spec["count"])
    bind_log_context(worker=f"{index}/{count}")  # on every log line
    total, digest = spec["validation"]
    shard = parse_shard(options.shard) if options.shard else None
    plan = Plan(
        manifest,
        Validation(manifest, int(total), (), 0, str(digest)),
        Defaults(project_id=options.project_id, workspace=options.workspace),
        options.manifest_format,
        shard,
        int(spec["jobs"]),
    )
    ledger_path = str(spec["ledger"])
    segment = Segment()
    if spec.get("history_end") is not None:
        history = fold([read_ledger(ledger_path, end=int(spec["history_end"]))])
        segment = plan_segment(ledger_path, plan, options, history)
    lock = lock_part(spec["part"])
    try:
        word = await pipe.next_line()
        if word != b"go":  # worker 0 failed, or the parent went away: send nothing
            return EXIT_INTERRUPTED if word is None else 0
        async with connect(options, env) as connection:
            folds = bool(spec.get("fold"))
            ledger = Ledger(spec["part"], fsync=options.fsync, mirror=folds)  # type: ignore[arg-type]
            live = LiveFold(ledger, share(plan.jobs, index, count)) if folds else None
            try:
                role = WorkerRole(index, count, str(spec["fleet"]), _companion(pipe))
                code = await dispatch(plan, options, connection, ledger, segment, role, live=live)
            finally:
                ledger.close()
        counts = live.counts() if live is not None else None
        if counts is not None:
            _send_counts(counts)
        return code
    finally:
        os.close(lock)
