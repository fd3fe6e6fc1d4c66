"""Reports: one final outcome per job, counts, breakdowns, latency; text, JSON or CSV.

The ledger is the single source of truth: `launcher run` prints its summary by
reading back the ledger it just wrote (a resumed run: the history it folded to
resume, caught up with what it appended), so the run's summary and a later
`launcher report` cannot disagree. Folding rules live in `launcher.ledger.fold`.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import rshift
from typing import Any, TextIO

import orjson

from launcher.flow.waiting import run_failed
from launcher.ledger.fold import fold
from launcher.ledger.folded import History
from launcher.ledger.instances import fold_instances, waited
from launcher.ledger.lineage import active_seconds
from launcher.ledger.read import LedgerRead, read_ledger
from launcher.models import STANDINGS, Job, Standing, failure_key

__all__ = [
    "CSV_COLUMNS",
    "OUTCOMES",
    "Summary",
    "csv_cell",
    "exit_status",
    "format_rows",
    "format_text",
    "job_rows",
    "latency_summary",
    "pending_rows",
    "percentile",
    "printable",
    "ranked",
    "summarize",
    "summary_of",
    "to_json",
    "write_csv",
]

OUTCOMES = STANDINGS  # where a job stands: its outcome, or pending


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class Summary:
    """One run (or several ledgers merged) folded into counts."""

    ledgers: list[str]
    run_ids: list[str]
    jobs: int
    outcomes: dict[Standing, int]
    failed_by_code: dict[str, int]
    by_workspace: dict[str, dict[Standing, int]]
    attempts: int
    reconciled: int
    elapsed_s: float
    latency_ms: dict[str, float | None]  # p50, p90, p99, max of answered attempts (None: none)
    torn_tail: list[str]
    exit_codes: list[int]
    stop_reasons: list[str]
    overlaps: int  # jobs present in more than one ledger (shards that overlap)
    overlap_examples: list[str]  # a few of them, to name
    missing_shards: list[str]  # `I/N` shards of a sharded run with no ledger given
    # Why each latest segment that ended stopped, when not `complete` (text and JSON agree).
    stopped: list[str] = field(default_factory=list)
    # Set by `launcher report`: the run's state (`complete`, `running`, `interrupted`,
    # `unknown`, or a stop reason), its description, and the process of a live run.
    state: str = "complete"
    state_text: str = ""
    live: list[dict[str, Any]] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # manifests that cannot list pending jobs
    # A run with waves: each wave's jobs by outcome, as its latest segment saw them.
    waves: list[dict[str, Any]] = field(default_factory=list)
    # A run with --wait: followed runs by their latest instance status (None: no wait).
    instances: dict[str, int] | None = None
    # A run with --verify: jobs checked against the job list, and the mismatches.
    verify: dict[str, Any] | None = None

    @property
    def request_rate(self) -> float:
        """Attempts per second over the run's elapsed time."""
        return self.attempts / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency(self) -> dict[str, float | None]:
        """Latency of answered attempts: p50, p90, p99 and max, in milliseconds.

        Every value is None when no attempt was answered: a run in which
        nothing answered has no latency, not one of 0 ms.
        """
        return dict(self.latency_ms)


def summarize(reads: Iterable[LedgerRead]) -> Summary:
    """Merge one or more ledgers into a `Summary` (one final outcome per job)."""
    return summary_of(fold(reads))


def summary_of(history: History, last_writes: Mapping[str, float] | None = None) -> Summary:
    """The `Summary` of an already folded history (`last_writes`: when killed segments
    wrote last, by run id, from `lineage.segment_last_writes`).

    Counts go by distinct job state (`History.groups`), so summarizing a
    million jobs makes no per-job object.
    """
    outcomes = dict.fromkeys(OUTCOMES, 0)
    failed_by_code: Counter[str] = Counter()
    by_workspace: dict[str, dict[Standing, int]] = {}
    reconciled = 0
    overlaps = 0
    for record, count in history.groups():
        outcome = record.final
        outcomes[outcome] += count
        workspace = by_workspace.get(record.workspace or "(default)")
        if workspace is None:
            workspace = by_workspace[record.workspace or "(default)"] = dict.fromkeys(OUTCOMES, 0)
        workspace[outcome] += count
        if outcome == "failed":
            failed_by_code[record.failure or "error"] += count
        elif outcome == "started" and record.reconciled:
            reconciled += count
        if record.sources > 1:
            overlaps += count
    total, missing_shards = _shards(history)
    seen = history.job_count
    jobs = max(history.declared_jobs, seen, total)
    outcomes["pending"] += jobs - seen
    run_ids: list[str] = []
    for run in history.runs:
        run_id = run.run_id
        if run_id is not None and run_id not in run_ids:
            run_ids.append(run_id)
    # The time segments ran, not the gaps between an interruption and its resume.
    elapsed = (
        active_seconds(history.runs, history.footers, history.last_t, last_writes)
        if history.last_t > history.first_t
        else 0.0
    )
    return Summary(
        ledgers=history.ledgers,
        run_ids=run_ids,
        jobs=jobs,
        outcomes=outcomes,
        # Most frequent first; ties by code, since groups come in no meaningful order.
        failed_by_code=dict(sorted(failed_by_code.items(), key=lambda item: (-item[1], item[0]))),
        by_workspace=dict(sorted(by_workspace.items())),
        attempts=history.attempts,
        reconciled=reconciled,
        elapsed_s=elapsed,
        latency_ms=latency_summary(history.latencies_us),
        torn_tail=history.torn_tail,
        exit_codes=[f["exit_code"] for f in history.footers if isinstance(f.get("exit_code"), int)],
        stop_reasons=[f["reason"] for f in history.footers if isinstance(f.get("reason"), str)],
        overlaps=overlaps,
        overlap_examples=history.overlap_examples,
        missing_shards=missing_shards,
        stopped=_stopped(history),
        waves=_waves(history.footers),
        instances=_instances(history),
        verify=_verify(history.footers),
    )


def _verify(footers: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """With --verify, the latest segment's check per shard, added up."""
    latest: dict[Any, dict[str, Any]] = {}
    for footer in footers:
        verified = footer.get("verify")
        if isinstance(verified, dict):
            latest[verified.get("shard")] = verified
    if not latest:
        return None
    total: dict[str, Any] = {"checked": 0, "mismatches": 0, "examples": []}
    for verified in latest.values():
        for key in ("checked", "mismatches"):
            value = verified.get(key)
            total[key] += value if isinstance(value, int) else 0
        total["examples"] += list(verified.get("examples") or ())
        if verified.get("error"):
            total["error"] = verified["error"]
    return total


def _instances(history: History) -> dict[str, int] | None:
    """With --wait, the followed runs by latest status: a pass over the `instance` events."""
    if not waited(history.runs):
        return None
    return fold_instances(read_ledger(path) for path in history.ledgers).counts()


_WAVE_COUNTS = ("jobs", "started", "failed", "unknown", "pending", "runs_failed")


def _waves(footers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The waves of a run: the latest footer's per shard (`launcher.run.waves`), added up."""
    latest: dict[Any, list[Any]] = {}
    for footer in footers:
        waves = footer.get("waves")
        if isinstance(waves, dict) and isinstance(waves.get("waves"), list):
            latest[waves.get("shard")] = waves["waves"]
    merged: dict[int, dict[str, Any]] = {}
    for waves in latest.values():
        for entry in waves:
            if not isinstance(entry, dict) or not isinstance(entry.get("wave"), int):
                continue
            into = merged.setdefault(
                entry["wave"], {"wave": entry["wave"], "state": entry.get("state")}
            )
            if entry.get("state") != into["state"]:
                into["state"] = "mixed"
            for key in _WAVE_COUNTS:
                value = entry.get(key)
                into[key] = into.get(key, 0) + (value if isinstance(value, int) else 0)
    return [merged[wave] for wave in sorted(merged)]


def _stopped(history: History) -> list[str]:
    """The reasons the latest segments that ended stopped for, `complete` left out."""
    resumed = {header.get("resumes") for header in history.headers}
    reasons: list[str] = []
    for footer in history.footers:
        reason = footer.get("reason")
        if footer.get("run_id") in resumed or not isinstance(reason, str):
            continue
        if reason != "complete" and reason not in reasons:
            reasons.append(reason)
    return reasons


def exit_status(summary: Summary) -> int:
    """`launcher report`'s exit status: 0 when every job started, else 1 (a job failed,
    is unknown, or was never sent; with --wait a run failed, with --verify a job mismatched)."""
    if summary.instances and any(run_failed(status) for status in summary.instances):
        return 1  # --wait: a followed run failed or did not end
    if summary.verify is not None and (summary.verify["mismatches"] or "error" in summary.verify):
        return 1  # --verify: a job is not in the state its call set
    return 0 if summary.jobs > 0 and summary.outcomes["started"] == summary.jobs else 1


def latency_summary(latencies_us: array[int]) -> dict[str, float | None]:
    """p50, p90, p99 (nearest rank, as `percentile`) and max, in ms, of whole microseconds
    (all None for no value)."""
    n = len(latencies_us)
    fractions = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "max": 1.0}
    if n == 0:
        return dict.fromkeys(fractions)
    ranks = {name: min(max(1, math.ceil(f * n)), n) for name, f in fractions.items()}
    values = ranked(latencies_us, ranks.values())
    return {name: round(values[rank] / 1000, 3) for name, rank in ranks.items()}


_BUCKET_BITS = 16  # a counting pass keeps at most 2^16 buckets


def ranked(values: array[int], ranks: Iterable[int]) -> dict[int, int]:
    """The value at each 1-based `rank` of `values` in sorted order, without sorting them.

    Sorting a million latencies makes a million float objects (32 MB). This
    counts instead: one C-level pass counts values by their top 16 bits;
    only the buckets holding a wanted rank are counted again, by their next
    16 bits, and so on until a bucket is a single value. Memory is a few
    bucket counts, whatever the values; with latencies under 65 ms one pass
    is exact, under 71 minutes two passes are.
    """
    wanted = sorted({r for r in ranks if 1 <= r <= len(values)})
    found: dict[int, int] = {}
    if not wanted:
        return found
    top = max(values)
    # Windows to count: (lowest value, width in bits, values below the window, ranks in it).
    windows = [(0, max(top.bit_length(), 1), 0, wanted)]
    first = True
    while windows:
        low, width, below, window_ranks = windows.pop()
        shift = max(0, width - _BUCKET_BITS)
        if first:  # the whole range: C-level counting (min(values) may be below 0)
            counts = Counter(map(rshift, values, repeat(shift))) if shift else Counter(values)
            first = False
        else:
            high = low + (1 << width)
            counts = Counter((v - low) >> shift for v in values if low <= v < high)
        pending = iter(window_ranks)
        rank = next(pending, None)
        narrower: dict[int, tuple[int, list[int]]] = {}
        cumulative = below
        for bucket in sorted(counts):
            count = counts[bucket]
            while rank is not None and rank <= cumulative + count:
                if shift == 0:
                    found[rank] = low + bucket
                else:
                    narrower.setdefault(bucket, (cumulative, []))[1].append(rank)
                rank = next(pending, None)
            cumulative += count
            if rank is None:
                break
        for bucket, (before, bucket_ranks) in narrower.items():
            windows.append((low + (bucket << shift), shift, before, bucket_ranks))
    return found


def _shards(history: History) -> tuple[int, list[str]]:
    """For sharded runs: the whole manifest's job count, and the shards with no ledger.

    The jobs of a missing shard were never sent by anyone: they count as
    pending, so a merged report still counts every job of the manifest once.
    """
    seen: dict[tuple[str, int], set[int]] = {}
    totals: dict[tuple[str, int], int] = {}
    for run in history.runs:
        if run.shard is None:
            continue
        index, _, count = run.shard.partition("/")
        key = (str(run.manifest_sha256), int(count))
        seen.setdefault(key, set()).add(int(index))
        totals[key] = run.manifest_total_jobs or 0
    missing = [
        f"{index}/{count}"
        for (digest, count), present in sorted(seen.items())
        for index in range(count)
        if index not in present
    ]
    return sum(totals.values()), missing


def to_json(summary: Summary) -> dict[str, Any]:
    """The report as the JSON object of the interface contract (plus extra fields)."""
    return {
        "jobs": summary.jobs,
        "outcomes": summary.outcomes,
        "failed_by_code": summary.failed_by_code,
        "by_workspace": summary.by_workspace,
        "attempts": summary.attempts,
        "retries": max(0, summary.attempts - (summary.jobs - summary.outcomes["pending"])),
        "reconciled": summary.reconciled,
        "elapsed_s": round(summary.elapsed_s, 3),
        "request_rate": round(summary.request_rate, 2),
        "latency_ms": summary.latency(),
        "run_ids": summary.run_ids,
        "ledgers": summary.ledgers,
        "torn_tail": summary.torn_tail,
        "stop_reasons": summary.stop_reasons,
        "overlaps": summary.overlaps,
        "missing_shards": summary.missing_shards,
        "stopped": summary.stopped,
        "state": summary.state,
        **({"live": summary.live} if summary.live else {}),
        **({"pending_unlisted": summary.unlisted} if summary.unlisted else {}),
        **({"waves": summary.waves} if summary.waves else {}),
        **({"instances": summary.instances} if summary.instances is not None else {}),
        **({"verify": summary.verify} if summary.verify is not None else {}),
    }


def dumps_json(summary: Summary) -> str:
    """`to_json` as indented text."""
    return orjson.dumps(to_json(summary), option=orjson.OPT_INDENT_2).decode()


def format_text(summary: Summary) -> str:
    """A summary for people: counts, failures by code, attempts, rate and latency."""
    o = summary.outcomes
    lat = summary.latency()
    width = len(str(summary.jobs))
    lines = [f"ledger    {', '.join(summary.ledgers)}"]
    lines.append(f"jobs      {summary.jobs:>{width}}")
    started = f"started   {o['started']:>{width}}"
    if summary.reconciled:
        started += f"  ({summary.reconciled} confirmed by a status check after a lost answer)"
    lines.append(started)
    lines.append(f"failed    {o['failed']:>{width}}")
    lines.extend(
        f"            {count:>{width}}  {code}" for code, count in summary.failed_by_code.items()
    )
    lines.append(f"unknown   {o['unknown']:>{width}}")
    if o["pending"]:
        lines.append(f"pending   {o['pending']:>{width}}  (never sent; resumable)")
    lines.append(
        f"attempts  {summary.attempts:>{width}}  in {summary.elapsed_s:.2f} s, "
        f"{summary.request_rate:.1f} requests/s"
    )
    if lat["p50"] is None or lat["p90"] is None or lat["p99"] is None or lat["max"] is None:
        lines.append("latency   no answers (no attempt got an HTTP answer)")
    else:
        lines.append(
            f"latency   p50 {lat['p50']:.1f} ms  p90 {lat['p90']:.1f} ms  "
            f"p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms"
        )
    if len(summary.by_workspace) > 1:
        name_width = max(12, *(len(name) for name in summary.by_workspace))
        lines.append(f"{'by workspace':<{name_width + 2}}" + "".join(f"{k:>9}" for k in OUTCOMES))
        for workspace, counts in summary.by_workspace.items():
            cells = "".join(f"{counts[k]:>9}" for k in OUTCOMES)
            lines.append(f"  {workspace:<{name_width}}{cells}")
    if summary.overlaps:
        example = f", e.g. {summary.overlap_examples[0]}" if summary.overlap_examples else ""
        lines.append(f"overlap   {summary.overlaps} job(s) appear in more than one ledger{example}")
    if summary.missing_shards:
        lines.append(
            f"missing   shard(s) {', '.join(summary.missing_shards)} have no ledger here; "
            "their jobs count as pending"
        )
    if summary.verify is not None:
        check = summary.verify
        line = f"verify    {check['checked']} checked, {check['mismatches']} not as expected"
        if check.get("error"):
            line += f" (listing failed: {check['error']})"
        lines.append(line)
        lines.extend(f"            {example}" for example in check["examples"])
    if summary.instances is not None:
        runs = ", ".join(f"{n} {status}" for status, n in summary.instances.items())
        lines.append(f"runs      {runs or 'none followed'}")
    if summary.waves:
        lines.append(f"{'waves':<12}" + "".join(f"{k:>12}" for k in _WAVE_COUNTS) + "  state")
        for entry in summary.waves:
            cells = "".join(f"{entry.get(k, 0):>12}" for k in _WAVE_COUNTS)
            lines.append(f"  {'#' + str(entry['wave']):<10}{cells}  {entry['state']}")
    if summary.state_text:
        lines.append(f"state     {summary.state_text}")
    if summary.stopped:
        lines.append(f"stopped   {', '.join(summary.stopped)}")
    lines.extend(f"note      pending jobs not listed: {why}" for why in summary.unlisted)
    if summary.torn_tail:
        lines.append(f"note      torn last line skipped in {', '.join(summary.torn_tail)}")
    return "\n".join(printable(line) for line in lines)


CSV_COLUMNS = (
    "job",
    "name",
    "project_id",
    "workspace",
    "outcome",
    "attempts",
    "status",
    "error_code",
    "error_msg",
    "request_id",
    "instance_id",
    "reconciled",
)


def job_rows(history: History, outcomes: frozenset[str] | None = None) -> Iterator[dict[str, Any]]:
    """One row per job (needs `fold(..., keep={"details"})`), optionally only some outcomes."""
    for job_id, record in history.items():
        outcome = record.final
        if outcomes is not None and outcome not in outcomes:
            continue
        status, code, message, request_id, instance_id = record.detail or (None,) * 5
        yield {
            "job": job_id,
            "name": record.name,
            "project_id": record.project_id,
            "workspace": record.workspace,
            "outcome": outcome,
            "attempts": record.attempts,
            "status": status,
            "error_code": code,
            "error_msg": message,
            "request_id": request_id,
            "instance_id": instance_id,
            "reconciled": record.reconciled,
        }


def pending_rows(jobs: Iterable[Job]) -> Iterator[dict[str, Any]]:
    """One `pending` row per never-sent job (see `launcher.run.unsent`), as `job_rows`."""
    for job in jobs:
        yield {
            "job": job.id,
            "name": job.name,
            "project_id": job.project_id,
            "workspace": job.workspace,
            "outcome": "pending",
            "attempts": 0,
            "status": None,
            "error_code": None,
            "error_msg": None,
            "request_id": None,
            "instance_id": None,
            "reconciled": False,
        }


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Per-job rows as CSV with a header (empty cells for absent values).

    A text cell a spreadsheet would take for a formula (it starts with `=`,
    `+`, `-`, `@`, a tab or a carriage return) gets a `'` in front, as OWASP
    recommends: names and error codes come from manifests and the service.
    """
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell that no spreadsheet runs: "" for None, `'` before a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that can
# make a terminal show text other than what it is (CVE-2021-42574, "Trojan Source").
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNPRINTABLE: dict[int, str | None] = dict.fromkeys((*range(0x20), *range(0x7F, 0xA0), *_BIDI))
_UNPRINTABLE.update(dict.fromkeys((0x09, 0x0A, 0x0D), " "))


def printable(text: Any) -> str:
    """`text` for a terminal: control and bidi-override characters removed (tab, CR, LF:
    a space), so a name or a service's message cannot move the cursor or hide text."""
    return str(text).translate(_UNPRINTABLE)


def format_rows(rows: Iterable[dict[str, Any]]) -> str:
    """Per-job lines for people: outcome, name, workspace, and why."""
    lines = []
    for row in rows:
        code, status = row["error_code"], row["status"]
        why = failure_key(code, status, None) if code or status else ""
        if row["error_msg"]:
            why = f"{why} {row['error_msg']}".strip()
        where = f" [{row['workspace']}]" if row["workspace"] else ""
        lines.append(printable(f"{row['outcome']:<8} {row['name']}{where}  {why}".rstrip()))
    return "\n".join(lines)
