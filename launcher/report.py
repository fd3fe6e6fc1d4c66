"""Reports: fold ledger events into one final outcome per job, and print them.

The ledger is the single source of truth: `launcher run` prints its summary by
reading back the ledger it just wrote, so the run's summary and a later
`launcher report` cannot disagree.

A job's final outcome is the `outcome` of its last settling event. A job
without one is `unknown` when its last attempt may have reached the service
(an intent without a result, or an unsettled ambiguous reply) and `pending`
when its last attempt certainly did not (throttled, 5xx, refused connection).
Jobs of the manifest that never appear in the ledger are `pending` too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from launcher.ledger import LedgerRead

__all__ = ["OUTCOMES", "Summary", "format_text", "percentile", "summarize", "to_json"]

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
class _JobState:
    outcome: str | None = None
    last: str = "intent"  # "intent", or the verdict of the last result
    failure: str | None = None
    workspace: str | None = None
    reconciled: bool = False


@dataclass(slots=True)
class Summary:
    """One run (or several ledgers merged) folded into counts."""

    ledgers: list[str]
    run_ids: list[str]
    jobs: int
    outcomes: dict[str, int]
    failed_by_code: dict[str, int]
    attempts: int
    reconciled: int
    elapsed_s: float
    latencies_ms: list[float] = field(repr=False)
    torn_tail: list[str]
    exit_codes: list[int]
    stop_reasons: list[str]

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
    """Merge the events of one or more ledgers into a `Summary`."""
    states: dict[str, _JobState] = {}
    latencies: list[float] = []
    attempts = 0
    declared_jobs = 0
    run_ids: list[str] = []
    ledgers: list[str] = []
    torn: list[str] = []
    exit_codes: list[int] = []
    reasons: list[str] = []
    first_t = math.inf
    last_t = -math.inf
    for read in reads:
        ledgers.append(str(read.path))
        if read.torn_tail:
            torn.append(str(read.path))
        ledger_jobs = 0
        for event in read.events:
            kind = event.get("event")
            t = event.get("t")
            if isinstance(t, int | float):
                first_t = min(first_t, t)
                last_t = max(last_t, t)
            if kind == "intent":
                attempts += 1
                state = states.get(event["job"])
                if state is None:
                    state = states[event["job"]] = _JobState(workspace=event.get("workspace"))
                state.last = "intent"
            elif kind == "result":
                state = states.setdefault(event["job"], _JobState())
                state.last = event.get("verdict", "?")
                latency = event.get("latency_ms")
                if event.get("status") is not None and isinstance(latency, int | float):
                    latencies.append(float(latency))
                _settle(state, event)
            elif kind == "check":
                state = states.setdefault(event["job"], _JobState())
                if event.get("conclusion") == "took_effect":
                    state.reconciled = True
                _settle(state, event)
            elif kind == "run":
                run_id = event.get("run_id")
                if isinstance(run_id, str) and run_id not in run_ids:
                    run_ids.append(run_id)
                manifest = event.get("manifest") or {}
                ledger_jobs = max(ledger_jobs, int(manifest.get("jobs") or 0))
            elif kind == "end":
                code = event.get("exit_code")
                if isinstance(code, int):
                    exit_codes.append(code)
                reason = event.get("reason")
                if isinstance(reason, str):
                    reasons.append(reason)
        declared_jobs += ledger_jobs

    outcomes = dict.fromkeys(OUTCOMES, 0)
    failed_by_code: Counter[str] = Counter()
    reconciled = 0
    for state in states.values():
        outcome = state.outcome
        if outcome is None:
            outcome = "pending" if state.last in _SETTLED_BY_RESEND else "unknown"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "failed":
            failed_by_code[state.failure or "error"] += 1
        if outcome == "started" and state.reconciled:
            reconciled += 1
    jobs = max(declared_jobs, len(states))
    outcomes["pending"] += jobs - len(states)
    latencies.sort()
    elapsed = last_t - first_t if last_t > first_t else 0.0
    return Summary(
        ledgers=ledgers,
        run_ids=run_ids,
        jobs=jobs,
        outcomes=outcomes,
        failed_by_code=dict(failed_by_code.most_common()),
        attempts=attempts,
        reconciled=reconciled,
        elapsed_s=elapsed,
        latencies_ms=latencies,
        torn_tail=torn,
        exit_codes=exit_codes,
        stop_reasons=reasons,
    )


def _settle(state: _JobState, event: dict[str, Any]) -> None:
    outcome = event.get("outcome")
    if outcome is None:
        return
    state.outcome = outcome
    if outcome == "failed":
        code = event.get("error_code")
        status = event.get("status")
        if isinstance(code, str):
            state.failure = code
        elif status is not None:
            state.failure = f"HTTP {status}"
        else:
            state.failure = event.get("failure") or "error"


def to_json(summary: Summary) -> dict[str, Any]:
    """The report as the JSON object of the interface contract (plus extra fields)."""
    return {
        "jobs": summary.jobs,
        "outcomes": summary.outcomes,
        "failed_by_code": summary.failed_by_code,
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
    stops = [reason for reason in summary.stop_reasons if reason != "complete"]
    if stops:
        lines.append(f"stopped   {', '.join(stops)}")
    if summary.torn_tail:
        lines.append(f"note      torn last line skipped in {', '.join(summary.torn_tail)}")
    return "\n".join(lines)
