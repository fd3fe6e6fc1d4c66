"""`make bench`: the launcher, a hand-written loop, the official SDK and hey, side by side.

One nginx on 127.0.0.1 answering 204 serves every tool in turn, in one run. For each tool
it prints starts/s (wall clock of the whole process), CPU seconds per 1,000 starts (user +
system of the process and its children, from wait4) and peak RSS, then the ratios the issue
sets as goals, and appends one dated row per tool to benchmarks/RESULTS.md.

    python benchmarks/bench.py [--jobs 50000] [--only launcher,naive,sdk,hey] [--repeat 1]

Tools: launcher, naive, sdk, hey; launcher-tls and naive-tls (the same against nginx's
https port, a self-signed certificate made with openssl); launcher-tls-proxy (over TLS
through a local tinyproxy's CONNECT tunnels); and sdk-pool64 (only when asked for).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import (
    BENCH_DIR,
    LAUNCHER,
    VENV_PYTHON,
    Measurement,
    Nginx,
    TinyProxy,
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

# `-tls`: the same tool against nginx's https port (self-signed, trusted via --ca-bundle
# for the launcher and SSL_CERT_FILE for the naive loop).
# `launcher-tls-proxy`: over TLS through a CONNECT tunnel of a local tinyproxy.
DEFAULT_TOOLS = (
    "launcher",
    "naive",
    "sdk",
    "hey",
    "launcher-tls",
    "naive-tls",
    "launcher-tls-proxy",
)
ALL_TOOLS = (*DEFAULT_TOOLS, "sdk-pool64")
BENCH_PYTHON = BENCH_DIR / ".venv-bench" / "bin" / "python"
HEY_BODY = '{"jobParams":[]}'
CONTENT_TYPE = "Content-Type: application/json;charset=UTF-8"

# The goals of the issue.
GOAL_VS_NAIVE = 1.5
GOAL_VS_NAIVE_TLS = 1.5  # issue 13: over TLS, the whole process, same run
GOAL_VS_SDK = 15.0
GOAL_CPU_US = 60.0


@dataclass(frozen=True, slots=True)
class Run:
    """One tool's run: its measurement and what the server saw meanwhile."""

    tool: str
    jobs: int
    m: Measurement
    requests: int  # requests the server answered during the run
    conns: int  # connections the server accepted during the run
    server_cpu_s: float
    others: float  # % of the machine busy with other work meanwhile
    problem: str | None

    @property
    def rate(self) -> float:
        return self.jobs / self.m.wall_s if self.m.wall_s > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.m.cpu_s / self.jobs * 1000.0

    @property
    def us_per_start(self) -> float:
        return self.m.cpu_s / self.jobs * 1e6


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_")}
    env["HUAWEICLOUD_SDK_AK"] = "BENCHDUMMYAK0000000000"
    env["HUAWEICLOUD_SDK_SK"] = "bench-dummy-secret-key-not-checked-by-nginx"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def command(tool: str, manifest: Path, jobs: int, url: str, out: Path, conc: int) -> list[str]:
    """The exact command line of `tool` for one run."""
    if tool == "launcher":
        return [
            str(LAUNCHER), "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--rate", "0", "--concurrency", str(conc), "--progress", "off",
            "--log-level", "warning", "--ledger", str(out),
        ]  # fmt: skip
    if tool == "naive":
        script = BENCH_DIR / "naive_loop.py"
        python = str(VENV_PYTHON)
        return [python, str(script), str(manifest), url, str(out), "--concurrency", str(conc)]
    if tool in ("sdk", "sdk-pool64"):
        script = BENCH_DIR / "sdk_threads.py"
        cmd = [str(BENCH_PYTHON), str(script), str(manifest), url, str(out), "--threads", str(conc)]
        return cmd + (["--pool-maxsize", str(conc)] if tool == "sdk-pool64" else [])
    if tool == "hey":
        hey = shutil.which("hey") or "hey"
        return [
            hey, "-n", str(jobs), "-c", str(conc), "-m", "POST", "-H", CONTENT_TYPE,
            "-d", HEY_BODY, f"{url}/v1/p1/jobs/job-00001/start",
        ]  # fmt: skip
    raise ValueError(tool)


def _check(tool: str, m: Measurement, jobs: int, requests: int) -> str | None:
    """What went wrong with a run, or None."""
    if m.timed_out:
        return f"timed out after {m.wall_s:.0f} s"
    if m.returncode != 0:
        return f"exit {m.returncode}: {m.tail(5)}"
    if tool == "hey":
        found = re.search(r"\[204\]\s+(\d+) responses", m.stdout)
        if found is None or int(found.group(1)) != jobs:
            return f"hey did not get {jobs} answers 204: {m.tail(8)}"
    if requests != jobs:
        return f"the server answered {requests} requests, expected {jobs}"
    return None


def run_tool(
    tool: str,
    nginx: Nginx,
    manifest: Path,
    jobs: int,
    tmp: Path,
    args: argparse.Namespace,
    proxy: TinyProxy | None = None,
) -> Run:
    """Run one tool once against `nginx` and measure it."""
    out = tmp / f"{tool}-{time.monotonic_ns()}.jsonl"
    env = _env()
    if "-tls" in tool:
        base = tool.split("-", 1)[0]
        cmd = command(base, manifest, jobs, nginx.tls_url, out, args.concurrency)
        env["SSL_CERT_FILE"] = str(nginx.ca_file)  # the naive loop's aiohttp trusts it so
        if base == "launcher":
            cmd += ["--ca-bundle", str(nginx.ca_file)]
        if tool.endswith("-proxy"):
            assert proxy is not None
            env["HTTPS_PROXY"] = proxy.url
    else:
        cmd = command(tool, manifest, jobs, nginx.url, out, args.concurrency)
    if tool == "hey":
        # hey 0.1.x gives each of its -c workers n // c requests: it sends that many.
        jobs = jobs // args.concurrency * args.concurrency
    wait_until_quiet(args.quiet_wait)
    before, cpu_before, machine_before = nginx.stats(), nginx.worker_cpu_s(), cpu_jiffies()
    m = measure(cmd, env=env, timeout=args.timeout, workdir=tmp)
    machine_after = cpu_jiffies()
    after, cpu_after = nginx.stats(), nginx.worker_cpu_s()
    server_cpu = cpu_after - cpu_before
    others = others_percent(machine_before, machine_after, m.cpu_s + server_cpu)
    requests = after.requests - before.requests - 1  # minus the stats read itself
    conns = after.accepts - before.accepts - 1
    out.unlink(missing_ok=True)
    problem = _check(tool, m, jobs, requests)
    return Run(tool, jobs, m, requests, conns, server_cpu, others, problem)


def _cells(run: Run, runs: int) -> list[str]:
    return [
        run.tool,
        f"{run.jobs}",
        f"{run.rate:,.0f}",
        f"{run.cpu_per_1k:.3f}",
        f"{run.us_per_start:.0f}",
        f"{run.m.max_rss_mb:.1f}",
        f"{run.m.wall_s:.2f}",
        f"{run.conns}",
        f"{run.others:.0f}",
        f"{runs}",
        f"{run.server_cpu_s:.2f}",
    ]


def _goal(label: str, value: float, goal: float, higher: bool, unit: str) -> tuple[str, bool]:
    ok = value >= goal if higher else value <= goal
    sign = "≥" if higher else "≤"
    verdict = "MET" if ok else "MISSED"
    return f"{label}: {value:.2f}{unit} (goal {sign} {goal:g}{unit}) {verdict}", ok


def goal_lines(best: dict[str, Run]) -> list[str]:
    """The ratios the issue sets as goals, as printable lines."""
    lines: list[str] = []
    if "launcher-tls" in best and "naive-tls" in best:
        ratio = best["launcher-tls"].rate / best["naive-tls"].rate
        lines.append(
            _goal("TLS: launcher ÷ naive loop starts/s", ratio, GOAL_VS_NAIVE_TLS, True, "×")[0]
        )
    if "launcher-tls-proxy" in best and "launcher-tls" in best:
        share = best["launcher-tls-proxy"].rate / best["launcher-tls"].rate * 100
        lines.append(
            f"launcher over TLS through tinyproxy, as a share of direct TLS: {share:.0f} %"
        )
    launcher = best.get("launcher")
    if launcher is None:
        return lines or ["(launcher not run: no goal to check)"]
    if "naive" in best:
        ratio = launcher.rate / best["naive"].rate
        lines.append(_goal("launcher ÷ naive loop starts/s", ratio, GOAL_VS_NAIVE, True, "×")[0])
    if "sdk" in best:
        ratio = launcher.rate / best["sdk"].rate
        lines.append(_goal("launcher ÷ SDK threads starts/s", ratio, GOAL_VS_SDK, True, "×")[0])
    cpu = launcher.us_per_start
    lines.append(_goal("launcher CPU per start", cpu, GOAL_CPU_US, False, " µs")[0])
    if "naive" in best:
        # The steadier figure on a machine whose speed drifts: both ran in the same minutes.
        ratio = cpu / best["naive"].us_per_start
        lines.append(f"launcher CPU per start ÷ the naive loop's in this run: {ratio:.2f}×")
    if "hey" in best:
        share = launcher.rate / best["hey"].rate * 100
        lines.append(f"launcher starts/s as a share of hey's (the ceiling): {share:.0f} %")
    return lines


def main() -> None:
    """Parse the options, run every tool against one nginx, print and record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per run [50000]")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_TOOLS), help=f"comma list of {', '.join(ALL_TOOLS)}"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; median kept [1]")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight per tool [64]")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds [600]")
    parser.add_argument("--budget", type=float, default=3600.0, help="whole bench, seconds")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx workers [1]")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this long for other work to quiet down [60 s]",
    )
    parser.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    tools = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in tools if t not in ALL_TOOLS]
    if unknown or not tools:
        parser.error(f"--only: unknown tool(s) {unknown}; choose from {', '.join(ALL_TOOLS)}")
    if args.jobs < 1 or args.repeat < 1:
        parser.error("--jobs and --repeat must be at least 1")
    _preflight(tools)

    facts = machine()
    print(
        f"machine: nproc={facts['nproc']}, {facts['cpu']}, {facts['memory']}, "
        f"kernel {facts['kernel']}, {facts['python']}, {facts['nginx']}, "
        f"launcher at {facts['commit']}"
    )
    started = time.monotonic()
    runs: dict[str, list[Run]] = {t: [] for t in tools}
    commands: dict[str, str] = {}
    with (
        workdir(args.keep) as tmp,
        Nginx(args.nginx_workers) as nginx,
        TinyProxy() if any(t.endswith("-proxy") for t in tools) else _nothing() as proxy,
    ):
        manifest = write_manifest(tmp / f"bench-{args.jobs}.jsonl", args.jobs)
        facts["commit"] = freeze_launcher(tmp)
        print(f"launcher code: {facts['commit']}")
        print(f"server: {nginx.url} (nginx, {args.nginx_workers} worker(s)); {args.jobs} jobs")
        for repeat in range(args.repeat):
            order = tools[repeat % len(tools) :] + tools[: repeat % len(tools)]  # rotate
            for tool in order:
                if time.monotonic() - started > args.budget:
                    print(f"budget of {args.budget:.0f} s spent: skipping {tool}")
                    continue
                run = run_tool(tool, nginx, manifest, args.jobs, tmp, args, proxy)
                commands[tool] = run.m.cmd
                status = "ok" if run.problem is None else f"PROBLEM: {run.problem}"
                print(
                    f"  [{repeat + 1}/{args.repeat}] {tool:<10} {run.rate:>9,.0f} starts/s  "
                    f"{run.m.wall_s:6.2f} s  {status}",
                    flush=True,
                )
                runs[tool].append(run)

    best: dict[str, Run] = {}
    for tool, done in runs.items():
        good = [r for r in done if r.problem is None]
        if good:
            # The median run by starts/s; for an even count the lower middle one (a real
            # run, not an average of two).
            ranked = sorted(good, key=lambda r: r.rate)
            best[tool] = ranked[(len(ranked) - 1) // 2]

    headers = [
        "tool", "jobs", "starts/s", "CPU s/1k", "µs/start", "peak RSS MB", "wall s",
        "conns", "others %", "runs", "nginx CPU s",
    ]  # fmt: skip
    print()
    print_table(headers, [_cells(best[t], len(runs[t])) for t in tools if t in best])
    failed = [t for t in tools if t not in best]
    for tool in failed:
        problems = "; ".join(r.problem or "" for r in runs[tool]) or "not run"
        print(f"{tool}: no good run: {problems}")
    print()
    goals = goal_lines(best)
    for line in goals:
        print(line)
    if not args.no_record and best:
        _record(best, runs, commands, facts, args, goals)
        print(f"\nappended to {BENCH_DIR / 'RESULTS.md'}")
    sys.exit(1 if failed else 0)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _preflight(tools: list[str]) -> None:
    missing = []
    if "launcher" in tools and not LAUNCHER.exists():
        missing.append(f"{LAUNCHER} (make .venv/.run-installed)")
    if "naive" in tools and not VENV_PYTHON.exists():
        missing.append(str(VENV_PYTHON))
    if any(t.startswith("sdk") for t in tools) and not BENCH_PYTHON.exists():
        missing.append(f"{BENCH_PYTHON} (make benchmarks/.venv-bench/.installed)")
    if "hey" in tools and shutil.which("hey") is None:
        missing.append("hey (apt-get install hey)")
    if missing:
        raise SystemExit("missing: " + "; ".join(missing) + "\n`make bench` installs all of it")


def _record(
    best: dict[str, Run],
    runs: dict[str, list[Run]],
    commands: dict[str, str],
    facts: dict[str, str],
    args: argparse.Namespace,
    goals: list[str],
) -> None:
    when = utc_now()
    rows = []
    for tool, run in best.items():
        cells = _cells(run, len(runs[tool]))[:-1]  # nginx CPU: printed, not recorded
        cmd = commands[tool].replace("|", "\\|")
        cells += [facts["nproc"], facts["cpu"], facts["commit"], f"`{cmd}`"]
        rows.append(f"| {when} | " + " | ".join(cells) + " |")
    update_section("## Throughput", rows)
    notes = [
        f"- {when}, {args.jobs} jobs, nproc {facts['nproc']}, {facts['cpu']}, {facts['commit']}, "
        f"nginx {args.nginx_workers} worker(s): " + "; ".join(goals)
    ]
    update_section("## Goal checks", notes)


if __name__ == "__main__":
    main()
