"""`make bench-profile`: where the launcher's CPU goes, per start, on a 50,000-job run.

Runs the launcher once unprofiled against the loopback nginx (for its CPU per start), then
once under `py-spy record --format speedscope`, folds the samples per function (self and
inclusive, over all threads) and per stage of the launch, prints the top entries and
appends them, with the commands, to the "Profile" section of benchmarks/RESULTS.md.
Each share is also turned into µs per start: (CPU per start of the unprofiled run) × share.

    python benchmarks/profile_launcher.py [--jobs 50000] [--rate 250] [--top 15]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from bench import BENCH_PYTHON, _env, command
from harness import (
    BENCH_DIR,
    ROOT,
    Measurement,
    Nginx,
    freeze_launcher,
    machine,
    measure,
    update_section,
    utc_now,
    wait_until_quiet,
    workdir,
    write_manifest,
)

__all__ = ["main"]

PY_SPY = BENCH_PYTHON.parent / "py-spy"
OUT_DIR = BENCH_DIR / "out"

# Stages of a launch: (label, top level?, functions); a sample counts toward a stage when its
# stack holds any of the functions (name, file suffix). Top-level stages are disjoint in
# practice; "other" is every sample that none of them holds.
STAGES: tuple[tuple[str, bool, tuple[tuple[str, str], ...]], ...] = (
    ("start-up: imports", True, (("_find_and_load", "importlib._bootstrap>"),)),
    ("validate the whole manifest before sending", True, (("plan_manifest", "runner.py"),)),
    ("workers: one job's attempts (all of it)", True, (("Dispatcher._work", "dispatch.py"),)),
    ("  pull the next job: read + parse its manifest line", False,
     (("Segment.to_send", "runner.py"), ("_only_jobs", "manifest.py"))),
    ("  ledger intent (format + write-through)", False, (("Ledger.intent", "ledger.py"),)),
    ("  client: build, sign, send, read the reply", False,
     (("DlfClient._request", "client.py"),)),
    ("    HTTP exchange (launcher.dlf.transport)", False, (("HttpPool.request", "transport.py"),)),
    ("    AK/SK signing", False,
     (("Signer.signature", "signing.py"), ("AkSkAuth.apply", "auth.py"))),
    ("    request path + body (path_segment, job_body)", False,
     (("path_segment", "client.py"), ("job_body", "client.py"))),
    ("  classify + settle + ledger result", False,
     (("Dispatcher._settle", "dispatch.py"), ("classify", "policy.py"))),
    ("event loop I/O callbacks (reading and parsing replies)", True,
     (("_SelectorSocketTransport._read_ready", "selector_events.py"),
      ("_Connection.data_received", "transport.py"))),
    ("ledger flusher (group commit every 5 ms)", True, (("Ledger.run_flusher", "ledger.py"),)),
    ("live fold of what the ledger wrote (every 50 ms)", True, (("_fold_live", "runner.py"),)),
    ("fsync worker thread (anyio.to_thread)", True,
     (("WorkerThread.run", "anyio/_backends/_asyncio.py"),)),
    ("final summary: the rest of the fold, the summary, the snapshot", True,
     (("summarize", "report.py"), ("summary_of", "report.py"), ("catch_up", "history.py"),
      ("LiveFold.history", "history.py"), ("format_text", "report.py"),
      ("save_fold", "history.py"))),
)  # fmt: skip


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


Folded = tuple[int, Counter[str], Counter[str], Counter[str], Counter[frozenset[str]]]


def fold(speedscope: Path) -> Folded:
    """(total samples, self samples per function, inclusive samples per function, samples per
    thread, samples per set of functions on the stack)."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    keys = [f"{f['name']} ({_short(f['file'])})" for f in frames]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stacks: Counter[frozenset[str]] = Counter()
    total = 0
    for profile in data["profiles"]:
        name = profile.get("name", "?")
        for stack in profile["samples"]:  # root first, leaf last
            total += 1
            threads[name] += 1
            if not stack:
                continue
            own[keys[stack[-1]]] += 1
            on_stack = frozenset(keys[i] for i in stack)
            stacks[on_stack] += 1
            for key in on_stack:
                inclusive[key] += 1
    return total, own, inclusive, threads, stacks


def _matches(key: str, functions: tuple[tuple[str, str], ...]) -> bool:
    return any(key.startswith(name + " (") and suffix in key for name, suffix in functions)


def stage_shares(stacks: Counter[frozenset[str]], total: int) -> list[tuple[str, float]]:
    """(label, share of all samples) per stage, then "other" for the samples no top stage holds."""
    shares = []
    covered: set[frozenset[str]] = set()
    for label, top, functions in STAGES:
        hits = [st for st in stacks if any(_matches(key, functions) for key in st)]
        shares.append((label, sum(stacks[st] for st in hits) / total if total else 0.0))
        if top:
            covered.update(hits)
    other = sum(n for st, n in stacks.items() if st not in covered)
    shares.append(("other: event loop machinery, timers, GC, ...", other / total if total else 0))
    return shares


# The per-start path of one process: `--workers auto` would split the run over
# processes, and py-spy follows one.
ONE_PROCESS = ["--workers", "1"]


def main() -> None:
    """Measure, profile, fold, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second [250]")
    parser.add_argument("--top", type=int, default=15, help="functions listed [15]")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} missing: `make bench-profile` installs it")

    OUT_DIR.mkdir(exist_ok=True)
    speedscope = OUT_DIR / f"launcher-{args.jobs}.speedscope.json"
    facts = machine()
    with workdir(args.keep) as tmp, Nginx() as nginx:
        manifest = write_manifest(tmp / f"profile-{args.jobs}.jsonl", args.jobs)
        facts["commit"] = freeze_launcher(tmp)
        print(f"launcher code: {facts['commit']}")
        # Unprofiled runs, alternating the default --fsync batch with --fsync never, twice:
        # the best of each gives the CPU per start, and the difference the cost of fsync.
        best: dict[str, Measurement] = {}
        for i in range(4):
            mode = ("batch", "never")[i % 2]
            ledger = tmp / f"plain-{i}.jsonl"
            cmd = command("launcher", manifest, args.jobs, nginx.url, ledger, args.concurrency)
            cmd += ONE_PROCESS + (["--fsync", "never"] if mode == "never" else [])
            wait_until_quiet(args.quiet_wait)
            m = measure(cmd, env=_env(), timeout=args.timeout, workdir=tmp)
            if m.returncode != 0:
                raise SystemExit(f"unprofiled launcher run failed: {m.tail()}")
            if mode not in best or m.cpu_s < best[mode].cpu_s:
                best[mode] = m
        base, never = best["batch"], best["never"]
        cpu_us = base.cpu_s / args.jobs * 1e6
        never_us = never.cpu_s / args.jobs * 1e6
        print(
            f"unprofiled (best of 2): {args.jobs / base.wall_s:,.0f} starts/s, {cpu_us:.0f} µs "
            f"CPU/start; with --fsync never: {args.jobs / never.wall_s:,.0f} starts/s, "
            f"{never_us:.0f} µs CPU/start"
        )
        target = command(
            "launcher", manifest, args.jobs, nginx.url, tmp / "profiled.jsonl", args.concurrency
        )
        target += ONE_PROCESS
        wait_until_quiet(args.quiet_wait)
        spy = [
            str(PY_SPY), "record", "--rate", str(args.rate), "--format", "speedscope",
            "-o", str(speedscope), "--", *target,
        ]  # fmt: skip
        profiled = measure(spy, env=_env(), timeout=args.timeout, workdir=tmp)
        if profiled.returncode != 0 or not speedscope.exists():
            raise SystemExit(f"py-spy run failed: {profiled.tail()}")

    total, own, inclusive, threads, stacks = fold(speedscope)
    print(f"{total} samples; per thread: " + ", ".join(f"{k}: {v}" for k, v in threads.items()))

    def row(key: str, n: int) -> tuple[str, str, str]:
        share = n / total
        return key, f"{share * 100:.1f}", f"{share * cpu_us:.0f}"

    self_rows = [row(k, n) for k, n in own.most_common(args.top)]
    stage_rows = [
        (label, f"{share * 100:.1f}", f"{share * cpu_us:.0f}")
        for label, share in stage_shares(stacks, total)
    ]
    launcher_incl = [
        row(k, n) for k, n in inclusive.most_common() if "(launcher/" in k and "<module>" not in k
    ][: args.top]

    for title, rows in (
        ("self time (the function's own code, callees excluded)", self_rows),
        ("stages (inclusive)", stage_rows),
        ("launcher functions (inclusive)", launcher_incl),
    ):
        print(f"\n{title}:")
        width = max(len(r[0]) for r in rows)
        for name, pct, us in rows:
            print(f"  {name:<{width}}  {pct:>5} %  {us:>5} µs/start")

    if args.no_record:
        return
    when = utc_now()
    lines = [
        "",
        f"### {when}: {args.jobs} jobs, nproc {facts['nproc']}, {facts['cpu']}, "
        f"launcher {facts['commit']}",
        "",
        f"Unprofiled run (best of 2 by CPU): {args.jobs / base.wall_s:,.0f} starts/s, "
        f"{cpu_us:.0f} µs CPU per start (`{base.cmd}`); the same with `--fsync never` (best of "
        f"2, alternated): {args.jobs / never.wall_s:,.0f} starts/s, {never_us:.0f} µs CPU per "
        f"start, so the default `--fsync batch` costs {cpu_us - never_us:.0f} µs per start. "
        f"Profiled with `{profiled.cmd}` ({total} samples over all threads: "
        + ", ".join(f"{k} {v}" for k, v in threads.items())
        + f"; speedscope file `{speedscope.relative_to(ROOT)}`, not committed). "
        "µs/start = share × the unprofiled CPU per start. py-spy samples without "
        "`--idle`, so the shares are of on-CPU time (a worker thread parked in "
        "`Condition.wait` can still show up).",
        "",
        "Stages (inclusive share of samples):",
        "",
        "| stage | % samples | µs/start |",
        "|---|---:|---:|",
        *[
            f"| {'&nbsp;' * 2 * (len(label) - len(label.lstrip()))}{label.strip()} | {pct} | {us} |"
            for label, pct, us in stage_rows
        ],
        "",
        f"Top {args.top} functions by self time:",
        "",
        "| function | % samples | µs/start |",
        "|---|---:|---:|",
        *[f"| `{name}` | {pct} | {us} |" for name, pct, us in self_rows],
        "",
        f"Top {args.top} launcher functions by inclusive time:",
        "",
        "| function | % samples | µs/start |",
        "|---|---:|---:|",
        *[f"| `{name}` | {pct} | {us} |" for name, pct, us in launcher_incl],
    ]
    update_section("## Profile", lines)
    print(f"\nappended to {BENCH_DIR / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
