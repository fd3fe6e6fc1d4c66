"""Reports: one final outcome per job, counts, breakdowns, latency; text, JSON or CSV.

The ledger is the single source of truth: `launcher run` prints its summary by
reading back the ledger it just wrote, so the run's summary and a later
`launcher report` cannot disagree. Folding rules live in `launcher.history`.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from launcher.history import History, fold
from launcher.ledger import LedgerRead

__all__ = [
    "CSV_COLUMNS",
    "OUTCOMES",
    "Summary",
    "format_rows",
    "format_text",
    "job_rows",
    "percentile",
    "summarize",
    "summary_of",
    "to_json",
    "write_csv",
]

OUTCOMES = ("started", "failed", "unknown", "pending")

# A last attempt with one of these verdicts certainly did not take effect.
_SETTLED_BY_RESEND = frozenset({"throttled", "transient", "refresh_auth", "not_sent"})


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
    outcomes: dict[str, int]
    failed_by_code: dict[str, int]
    by_workspace: dict[str, dict[str, int]]
    attempts: int
    reconciled: int
    elapsed_s: float
    latencies_ms: list[float] = field(repr=False)
    torn_tail: list[str]
    exit_codes: list[int]
    stop_reasons: list[str]
    overlaps: list[str]  # jobs present in more than one ledger (shards that overlap)
    missing_shards: list[str]  # `I/N` shards of a sharded run with no ledger given

    @property
    def request_rate(self) -> float:
        """Attempts per second over the run's elapsed time."""
        return self.attempts / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency(self) -> dict[str, float]:
        """Latency of answered attempts: p50, p90, p99 and max, in milliseconds."""
        values = self.latencies_ms
        return {
            "p50": round(percentile(values, 0.50), 3),
            "p90": round(percentile(values, 0.90), 3),
            "p99": round(percentile(values, 0.99), 3),
            "max": round(values[-1], 3) if values else 0.0,
        }


def summarize(reads: Iterable[LedgerRead]) -> Summary:
    """Merge one or more ledgers into a `Summary` (one final outcome per job)."""
    return summary_of(fold(reads))


def summary_of(history: History) -> Summary:
    """The `Summary` of an already folded history."""
    outcomes = dict.fromkeys(OUTCOMES, 0)
    failed_by_code: Counter[str] = Counter()
    by_workspace: dict[str, dict[str, int]] = {}
    reconciled = 0
    overlaps: list[str] = []
    for job_id, record in history.jobs.items():
        outcome = record.final
        outcomes[outcome] += 1
        workspace = by_workspace.get(record.workspace or "(default)")
        if workspace is None:
            workspace = by_workspace[record.workspace or "(default)"] = dict.fromkeys(OUTCOMES, 0)
        workspace[outcome] += 1
        if outcome == "failed":
            failed_by_code[record.failure or "error"] += 1
        elif outcome == "started" and record.reconciled:
            reconciled += 1
        if record.sources > 1:
            overlaps.append(job_id)
    total, missing_shards = _shards(history)
    jobs = max(history.declared_jobs, len(history.jobs), total)
    outcomes["pending"] += jobs - len(history.jobs)
    run_ids: list[str] = []
    for header in history.headers:
        run_id = header.get("run_id")
        if isinstance(run_id, str) and run_id not in run_ids:
            run_ids.append(run_id)
    elapsed = history.last_t - history.first_t if history.last_t > history.first_t else 0.0
    return Summary(
        ledgers=history.ledgers,
        run_ids=run_ids,
        jobs=jobs,
        outcomes=outcomes,
        failed_by_code=dict(failed_by_code.most_common()),
        by_workspace=dict(sorted(by_workspace.items())),
        attempts=history.attempts,
        reconciled=reconciled,
        elapsed_s=elapsed,
        latencies_ms=sorted(history.latencies_ms),
        torn_tail=history.torn_tail,
        exit_codes=[f["exit_code"] for f in history.footers if isinstance(f.get("exit_code"), int)],
        stop_reasons=[f["reason"] for f in history.footers if isinstance(f.get("reason"), str)],
        overlaps=overlaps,
        missing_shards=missing_shards,
    )


def _shards(history: History) -> tuple[int, list[str]]:
    """For sharded runs: the whole manifest's job count, and the shards with no ledger.

    The jobs of a missing shard were never sent by anyone: they count as
    pending, so a merged report still counts every job of the manifest once.
    """
    seen: dict[tuple[str, int], set[int]] = {}
    totals: dict[tuple[str, int], int] = {}
    for header in history.headers:
        shard = header.get("shard")
        manifest = header.get("manifest") or {}
        if not isinstance(shard, str):
            continue
        index, _, count = shard.partition("/")
        key = (str(manifest.get("sha256")), int(count))
        seen.setdefault(key, set()).add(int(index))
        totals[key] = int(manifest.get("total_jobs") or 0)
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
        "overlaps": len(summary.overlaps),
        "missing_shards": summary.missing_shards,
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
        lines.append(
            f"overlap   {len(summary.overlaps)} job(s) appear in more than one ledger, "
            f"e.g. {summary.overlaps[0]}"
        )
    if summary.missing_shards:
        lines.append(
            f"missing   shard(s) {', '.join(summary.missing_shards)} have no ledger here; "
            "their jobs count as pending"
        )
    stops = [reason for reason in summary.stop_reasons if reason != "complete"]
    if stops:
        lines.append(f"stopped   {', '.join(stops)}")
    if summary.torn_tail:
        lines.append(f"note      torn last line skipped in {', '.join(summary.torn_tail)}")
    return "\n".join(lines)


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
    for job_id, record in history.jobs.items():
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


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Per-job rows as CSV with a header (empty cells for absent values)."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})


def format_rows(rows: Iterable[dict[str, Any]]) -> str:
    """Per-job lines for people: outcome, name, workspace, and why."""
    lines = []
    for row in rows:
        why = row["error_code"] or (f"HTTP {row['status']}" if row["status"] else "")
        if row["error_msg"]:
            why = f"{why} {row['error_msg']}".strip()
        where = f" [{row['workspace']}]" if row["workspace"] else ""
        lines.append(f"{row['outcome']:<8} {row['name']}{where}  {why}".rstrip())
    return "\n".join(lines)
