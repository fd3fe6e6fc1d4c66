"""`make bench-scale`: peak memory and time of the launcher at 300,000 and 1,000,000 jobs.

For each size: `launcher validate`, `launcher run --dry-run`, a real `launcher run` against a
loopback nginx answering 204 (AK/SK signing and the ledger on, as in `make bench`), then
`launcher report --format json` on the ledger that run wrote, and `launcher run --resume` of
that finished run. Prints wall clock, CPU and peak RSS of each, checks them against the goals
of the issue (≤ 120 MB peak RSS at 1M jobs, a report of a 1M-job ledger in seconds, a resume
of a finished 300,000-job run in ≤ 2 s) and appends one dated row each to RESULTS.md.

    python benchmarks/scale.py [--sizes 300000,1000000] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import _env
from harness import (
    LAUNCHER,
    Measurement,
    Nginx,
    cpu_jiffies,
    freeze_launcher,
    machine,
    measure,
    others_percent,
    print_table,
    update_section,
    utc_now,
    wait_until_quiet,
    workdir,
    write_manifest,
)

__all__ = ["main"]

GOAL_RSS_MB = 120.0
GOAL_REPORT_S = 10.0  # "a report in seconds", read as: under 10 s
GOAL_RESUME_S = 2.0


@dataclass(frozen=True, slots=True)
class Step:
    """One measured command of the scale benchmark."""

    what: str
    jobs: int
    m: Measurement
    others: float
    goal: str
    met: bool | None  # None: no goal for this step


def _verdict(met: bool | None) -> str:
    return "-" if met is None else "MET" if met else "MISSED"


def _launcher_supports(flag: str) -> bool:
    done = subprocess.run(
        [str(LAUNCHER), "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return flag in done.stdout


def _step(
    what: str, jobs: int, cmd: list[str], tmp: Path, args: argparse.Namespace, goal: str
) -> tuple[Measurement, float]:
    wait_until_quiet(args.quiet_wait)
    before = cpu_jiffies()
    m = measure(cmd, env=_env(), timeout=args.timeout, workdir=tmp)
    others = others_percent(before, cpu_jiffies(), m.cpu_s)
    status = "timed out" if m.timed_out else f"exit {m.returncode}"
    print(
        f"  {what:<34} {jobs:>9,}  {m.wall_s:8.2f} s  {m.cpu_s:8.2f} s CPU  "
        f"{m.max_rss_mb:8.1f} MB  {status}  goal: {goal}",
        flush=True,
    )
    if m.returncode != 0 or m.timed_out:
        print("    " + m.tail(6).replace("\n", "\n    "))
    return m, others


def main() -> None:
    """Run every step for every size, print the table and record the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000", help="comma list of job counts")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per command, seconds")
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if not LAUNCHER.exists():
        raise SystemExit(f"{LAUNCHER} missing: `make bench-scale` installs it")

    facts = machine()
    print(f"machine: nproc={facts['nproc']}, {facts['cpu']}, launcher at {facts['commit']}")
    has_resume = _launcher_supports("--resume")
    steps: list[Step] = []
    rss_goal = f"≤ {GOAL_RSS_MB:g} MB"
    with workdir(args.keep) as tmp, Nginx() as nginx:
        facts["commit"] = freeze_launcher(tmp)
        print(f"launcher code: {facts['commit']}")
        for jobs in sizes:
            manifest = write_manifest(tmp / f"scale-{jobs}.jsonl", jobs)
            ledger = tmp / f"scale-{jobs}.ledger.jsonl"
            common = ["--project-id", "p1", "--progress", "off", "--log-level", "warning"]
            endpoint = ["--endpoint", nginx.url, "--rate", "0"]
            endpoint += ["--concurrency", str(args.concurrency)]
            plan: list[tuple[str, list[str], str]] = [
                ("validate", [str(LAUNCHER), "validate", str(manifest), "--project-id", "p1"],
                 rss_goal),
                ("run --dry-run",
                 [str(LAUNCHER), "run", str(manifest), *endpoint, *common, "--dry-run"], rss_goal),
                ("run (nginx 204, AK/SK, ledger)",
                 [str(LAUNCHER), "run", str(manifest), *endpoint, *common, "--ledger", str(ledger)],
                 rss_goal),
            ]  # fmt: skip
            for what, cmd, goal in plan:
                m, others = _step(what, jobs, cmd, tmp, args, goal)
                ok = m.returncode == 0 and not m.timed_out and m.max_rss_mb <= GOAL_RSS_MB
                steps.append(Step(what, jobs, m, others, goal, ok))
            if not ledger.exists():
                print(f"  no ledger for {jobs} jobs: report and resume skipped")
                continue
            size_mb = ledger.stat().st_size / 1e6
            what = f"report --format json ({size_mb:.0f} MB ledger)"
            cmd = [str(LAUNCHER), "report", "--format", "json", str(ledger)]
            goal = f"seconds (≤ {GOAL_REPORT_S:g} s)"
            m, others = _step(what, jobs, cmd, tmp, args, goal)
            ok = m.returncode == 0 and m.wall_s <= GOAL_REPORT_S
            steps.append(Step(what, jobs, m, others, goal, ok))
            if has_resume:
                # Resume of the finished run just recorded: every job is settled, so nothing
                # should be sent; the goal is for 300,000 jobs.
                cmd = [str(LAUNCHER), "run", str(manifest), *endpoint, *common]
                cmd += ["--ledger", str(ledger), "--resume"]
                goal = f"≤ {GOAL_RESUME_S:g} s" if jobs == 300_000 else "none (set at 300k)"
                sent_before = nginx.stats().requests
                m, others = _step("run --resume (finished run)", jobs, cmd, tmp, args, goal)
                resent = nginx.stats().requests - sent_before - 1
                if resent:
                    print(f"    resume sent {resent} request(s) for a finished run")
                ok: bool | None = m.returncode == 0 and m.wall_s <= GOAL_RESUME_S and resent == 0
                if jobs != 300_000 and m.returncode == 0 and resent == 0:
                    ok = None  # no goal at this size
                steps.append(Step("run --resume (finished run)", jobs, m, others, goal, ok))
            else:
                # TODO(resume): measure "resume of a finished 300,000-job run ≤ 2 s" here once
                # `launcher run --resume` exists; until then it is not measured, not faked.
                print("  TODO: `launcher run --resume` does not exist yet: resume not measured")

    headers = ["what", "jobs", "wall s", "CPU s", "peak RSS MB", "goal", "verdict", "others %"]
    rows = [
        [
            s.what,
            f"{s.jobs}",
            f"{s.m.wall_s:.2f}",
            f"{s.m.cpu_s:.2f}",
            f"{s.m.max_rss_mb:.1f}",
            s.goal,
            _verdict(s.met),
            f"{s.others:.0f}",
        ]
        for s in steps
    ]
    print()
    print_table(headers, rows)
    if not has_resume:
        print("TODO: resume of a finished 300,000-job run ≤ 2 s: not measured (no --resume)")
    if args.no_record:
        return
    when = utc_now()
    lines = []
    for s in steps:
        verdict = _verdict(s.met) + ": " + s.goal
        if s.m.returncode != 0 or s.m.timed_out:
            verdict += f" (exit {s.m.returncode}{', timed out' if s.m.timed_out else ''})"
        cmd = s.m.cmd.replace("|", "\\|")
        cells = [
            when, s.what, f"{s.jobs}", f"{s.m.wall_s:.2f}", f"{s.m.cpu_s:.2f}",
            f"{s.m.max_rss_mb:.1f}", verdict, f"{s.m.returncode}", f"{s.others:.0f}",
            facts["nproc"], facts["cpu"], facts["commit"], f"`{cmd}`",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if not has_resume:
        lines.append(
            f"| {utc_now()} | TODO: run --resume of a finished run | 300000 | | | | "
            f"not measured: `--resume` does not exist yet | | | {facts['nproc']} | "
            f"{facts['cpu']} | {facts['commit']} | |"
        )
    update_section("## Scale and memory", lines)
    print(f"\nappended to RESULTS.md ({time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
