"""Flow-control scenarios of the issue "run at exactly what the service allows", measured.

Each scenario starts `launcher sim` in its own process (so the simulator's CPU is
not the launcher's), runs the real `launcher run` against it, and reads what the
server saw from `GET /_sim/stats`. Results print as a table and, with --record,
are appended to benchmarks/RESULTS.md under "Flow control".

    .venv/bin/python benchmarks/flow.py [--record] [--only pacing,faults,limit,wrong-sk]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
AK, SK = "BENCHFLOWAK", "bench-flow-secret"


@contextmanager
def simulator(*options: str) -> Iterator[str]:
    """`launcher sim` on a free port; yields its URL."""
    process = subprocess.Popen(
        [str(BIN / "launcher"), "sim", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/_sim/stats", timeout=10) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def manifest(directory: Path, count: int, prefix: str = "job") -> Path:
    path = directory / f"{prefix}-{count}.jsonl"
    with open(path, "w") as out:
        for n in range(count):
            out.write(json.dumps({"name": f"{prefix}-{n:05d}", "params": {"d": "1"}}) + "\n")
    return path


def launch(
    path: Path, url: str, ledger: Path, *options: str, sk: str = SK
) -> tuple[int, float, str]:
    env = {**os.environ, "HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": sk}
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "launcher"), "run", str(path), "--endpoint", url, "--project-id", "p1",
         "--progress", "off", "--log-level", "error", "--ledger", str(ledger), *options],
        env=env, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    return done.returncode, time.monotonic() - started, done.stdout + done.stderr


def starts_per_job(seen: dict[str, object]) -> tuple[int, int]:
    """(jobs started exactly once, jobs started more than once) as the server counts."""
    effects = seen["effects"]
    assert isinstance(effects, list)
    once = sum(1 for e in effects if e["start"] == 1)
    twice = sum(1 for e in effects if e["start"] > 1)
    return once, twice


def pacing(work: Path) -> str:
    path = manifest(work, 2500)
    with simulator() as url:
        code, _, _ = launch(path, url, work / "pacing.jsonl", "--rate", "500/s")
        seen = stats(url)
    return (
        f"--rate 500/s, 2,500 jobs: exit {code}, server rate {seen['achieved_rate']:.1f}/s "
        f"(goal 490-510), busiest 100 ms {seen['busiest_100ms']} (goal <= 64)"
    )


def faults(work: Path) -> str:
    path = manifest(work, 3000)
    options = (
        "--fail-503", "0.05", "--fail-500", "0.03", "--fail-429", "0.05",
        "--reset-before", "0.03", "--reset-after", "0.03",
        "--slow-fraction", "0.02", "--slow-seconds", "2", "--seed", "3",
    )  # fmt: skip
    with simulator(*options) as url:
        code, elapsed, _ = launch(
            path, url, work / "faults.jsonl", "--max-attempts", "6", "--timeout", "1"
        )
        seen = stats(url)
    once, twice = starts_per_job(seen)
    return (
        f"3,000 jobs, 21% faults, --timeout 1 --max-attempts 6 (default --rate 30/s): "
        f"exit {code} (goal 0), started once {once}, more than once {twice}, {elapsed:.0f} s"
    )


def limit(work: Path) -> str:
    path = manifest(work, 9000)
    with simulator("--rate-limit", "300") as url:
        code, elapsed, _ = launch(path, url, work / "limit.jsonl", "--rate", "0")
        seen = stats(url)
    requests = int(seen["requests"])  # type: ignore[call-overload]
    throttled = int(seen["rate_limited"])  # type: ignore[call-overload]
    return (
        f"9,000 jobs at --rate 0 against a 300/s limit: exit {code}, goodput "
        f"{9000 / elapsed:.0f} jobs/s (goal >= 270, process start-up included), throttled "
        f"{throttled / requests:.1%} of {requests} requests (goal < 5%)"
    )


def wrong_sk(work: Path) -> str:
    path = manifest(work, 1000)
    with simulator("--aksk", f"{AK}:{SK}") as url:
        code, _, output = launch(
            path, url, work / "wrong.jsonl", "--concurrency", "64", "--rate", "0", sk="wrong"
        )
        seen = stats(url)
    said = "authentication failed" in output
    return (
        f"wrong SK, 1,000 jobs, --concurrency 64: exit {code} (goal 3), rejected requests "
        f"{seen['bad_signatures']} (goal <= 2), message names it: {said}"
    )


SCENARIOS: dict[str, Callable[[Path], str]] = {
    "pacing": pacing,
    "faults": faults,
    "limit": limit,
    "wrong-sk": wrong_sk,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.only.split(","):
            line = SCENARIOS[name](Path(work))
            print(line, flush=True)
            lines.append(line)
    if args.record:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as out:
            out.write(f"\n### {stamp}, commit {commit}, nproc {os.cpu_count()}\n\n")
            out.write(f"Command: `.venv/bin/python benchmarks/flow.py --only {args.only}`\n\n")
            out.writelines(f"- {line}\n" for line in lines)


if __name__ == "__main__":
    sys.exit(main())
