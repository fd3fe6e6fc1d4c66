"""`--metrics-port`: Prometheus metrics on `/metrics`, for `launcher run` and `loadtest`.

`serve_metrics` serves any collector's metrics while inside its block (a port
in use is a UsageError, exit 2, raised before anything is sent). For `run`,
`RunCollector` reads the dispatcher's `Tally` when scraped, so the request
path pays nothing: counts of jobs by outcome, attempts, requests in flight,
throttled answers and failures by code. Latency of a run is in its ledger and
report; a per-request histogram would cost every request.

prometheus_client and aiohttp's server load only when metrics are asked for.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from launcher.config import RunOptions
from launcher.errors import UsageError
from launcher.flow.dispatch import Tally

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["run_collector", "serve_metrics", "serving_metrics"]


def serving_metrics(options: RunOptions, tally: Tally) -> AbstractAsyncContextManager[object]:
    """`run --metrics-port`: the run's metrics while inside (bind before anything is sent)."""
    if options.metrics_port is None:
        return contextlib.nullcontext()
    return serve_metrics(
        run_collector(tally),
        options.metrics_host,
        options.metrics_port,
        announce=lambda url: sys.stderr.write(f"launcher: Prometheus metrics at {url}\n"),
    )


@asynccontextmanager
async def serve_metrics(
    collector: Collector, host: str, port: int, *, announce: Callable[[str], object]
) -> AsyncIterator[str]:
    """Serve `/metrics` (Prometheus text format) while inside the block; yield its URL.

    aiohttp's server runs on the event loop by itself, so no task is needed.
    """
    from aiohttp import web
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
    await runner.setup()
    try:
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as error:
            raise UsageError(f"--metrics-port {port}: {error.strerror or error}") from None
        bound = runner.addresses[0][1]
        url = f"http://{host}:{bound}/metrics"
        announce(url)
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def run_collector(tally: Tally) -> Collector:
    """A collector of a run's `Tally` (read when scraped)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    class RunCollector(Collector):
        def collect(self) -> Iterable[Metric]:
            yield GaugeMetricFamily(
                "launcher_run_jobs", "Jobs this run is to send (the shard's, after a resume's "
                "settled ones).", value=tally.total
            )  # fmt: skip
            outcomes = CounterMetricFamily(
                "launcher_run_outcomes",
                "Jobs with a final outcome, by outcome.",
                labels=["outcome"],
            )
            outcomes.add_metric(["started"], tally.started)
            outcomes.add_metric(["failed"], tally.failed)
            outcomes.add_metric(["unknown"], tally.unknown)
            yield outcomes
            yield CounterMetricFamily(
                "launcher_run_done", "Jobs with a final outcome.", value=tally.done
            )
            yield CounterMetricFamily(
                "launcher_run_attempts", "Requests sent, retries included.", value=tally.attempts
            )
            yield CounterMetricFamily(
                "launcher_run_throttled", "Answers that were 429.", value=tally.throttled
            )
            failures = CounterMetricFamily(
                "launcher_run_failures", "Failed jobs by error code.", labels=["code"]
            )
            for code, count in tally.failures.items():
                failures.add_metric([code], count)
            yield failures
            yield GaugeMetricFamily(
                "launcher_run_in_flight", "Requests in flight now.", value=tally.in_flight
            )
            yield GaugeMetricFamily(
                "launcher_run_checking",
                "Jobs whose lost answer is being checked now (waiting out --settle, mostly).",
                value=tally.checking,
            )

    return RunCollector()
