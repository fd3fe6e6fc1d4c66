"""The official SDK baseline: `huaweicloudsdkdgc.v1.DgcClient.start_job` from a pool of 64 threads.

What users have today: the official DataArts (DGC/DLF v1) SDK client, AK/SK signed by the
SDK itself, `requests` underneath with the SDK's default HTTP config (a 10-connection pool
unless `--pool-maxsize` says otherwise), driven by a `ThreadPoolExecutor(64)`; one JSONL
result line is appended per request (under a lock), like the other tools.

    python benchmarks/sdk_threads.py MANIFEST URL RESULTS.jsonl [--threads 64] [--pool-maxsize N]

AK/SK come from HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK (dummy values are fine against a
server that does not check signatures). Exits 0 when every start succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkdgc.v1 import DgcClient, JobParam, StartJobReq, StartJobRequest

__all__ = ["main"]


def main() -> None:
    """Parse the arguments and start every job of the manifest through the SDK."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("url", help="endpoint, e.g. http://127.0.0.1:8080")
    parser.add_argument("results", help="JSONL file to append one result line per request to")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--project-id", default="p1")
    parser.add_argument(
        "--pool-maxsize", type=int, default=0, help="connection pool size (0: SDK default, 10)"
    )
    args = parser.parse_args()

    # With 64 threads and a 10-connection pool, urllib3 warns once per discarded
    # connection; keep stderr readable (the churn itself is part of what is measured).
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    config = HttpConfig.get_default_config()
    if args.pool_maxsize:
        config.pool_connections = args.pool_maxsize
        config.pool_maxsize = args.pool_maxsize
    credentials = BasicCredentials(
        os.environ["HUAWEICLOUD_SDK_AK"], os.environ["HUAWEICLOUD_SDK_SK"], args.project_id
    )
    client = (
        DgcClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([args.url.rstrip("/")])
        .build()
    )

    lock = threading.Lock()
    failures = 0

    with open(args.results, "a", encoding="utf-8") as out:

        def start(line: str) -> None:
            nonlocal failures
            job = json.loads(line)
            params = [JobParam(name=k, value=v) for k, v in job.get("params", {}).items()]
            request = StartJobRequest(job_name=job["name"], body=StartJobReq(job_params=params))
            started = time.perf_counter()
            try:
                response = client.start_job(request)
                status: int | None = response.status_code
            except Exception as error:  # the SDK raises for 4xx/5xx and transport errors
                status = getattr(error, "status_code", None)
            latency = time.perf_counter() - started
            record = json.dumps(
                {"name": job["name"], "status": status, "latency_ms": latency * 1000}
            )
            with lock:
                if status is None or status >= 300:
                    failures += 1
                out.write(record + "\n")

        with (
            open(args.manifest, encoding="utf-8") as lines,
            ThreadPoolExecutor(args.threads) as pool,
        ):
            for _ in pool.map(start, (ln for ln in lines if ln.strip() and ln[0] != "#")):
                pass
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
