"""The baseline: a hand-written aiohttp + asyncio.Semaphore + JSONL loop.

This is the loop people write before they reach for a launcher, kept honest and plain:
one `aiohttp.ClientSession`, an `asyncio.Semaphore(64)`, one task per manifest line
(created up front and gathered, the usual idiom), one POST per job, and one JSONL result
line appended per request. No signing, no retries, no rate limit, no write-ahead intent.

    python benchmarks/naive_loop.py MANIFEST URL RESULTS.jsonl [--concurrency 64]

Exits 0 when every request got a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import IO
from urllib.parse import quote

import aiohttp

__all__ = ["main"]


async def _launch(lines: IO[str], out: IO[str], url: str, concurrency: int, project: str) -> int:
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(session: aiohttp.ClientSession, out: IO[str], line: str) -> None:
        nonlocal failures
        job = json.loads(line)
        params = [{"name": k, "value": v} for k, v in job.get("params", {}).items()]
        target = f"{url}/v1/{project}/jobs/{quote(job['name'], safe='')}/start"
        async with sem:
            started = time.perf_counter()
            try:
                async with session.post(target, json={"jobParams": params}) as response:
                    await response.read()
                    status: int | None = response.status
            except aiohttp.ClientError:
                status = None
            latency = time.perf_counter() - started
        if status is None or status >= 300:
            failures += 1
        record = {"name": job["name"], "status": status, "latency_ms": latency * 1000}
        out.write(json.dumps(record) + "\n")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(one(session, out, line) for line in lines if line.strip() and line[0] != "#")
        )
    return 1 if failures else 0


def main() -> None:
    """Parse the arguments and run the loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("results", help="JSONL file to append one result line per request to")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--project-id", default="p1")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with open(args.manifest, encoding="utf-8") as lines, open(args.results, "a") as out:
        code = asyncio.run(_launch(lines, out, url, args.concurrency, args.project_id))
    sys.exit(code)


if __name__ == "__main__":
    main()
