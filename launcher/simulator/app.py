"""A local imitation of the DataArts Factory (DLF) job API, for tests, the demo and benchmarks.

`Simulator` is a real aiohttp server that answers the calls the launcher makes,
with the real paths, headers, status codes and error bodies:

    POST /v1/{project_id}/jobs/{name}/start          -> 204, job status SCHEDULING
    POST /v1/{project_id}/jobs/{name}/stop           -> 204, job status STOPPED
    POST /v1/{project_id}/jobs/{name}/run-immediate  -> 200 {"instanceId": n}
    GET  /v1/{project_id}/jobs?jobName=&jobType=&limit=&offset=   (offset: a page number)
    GET  /v1/{project_id}/jobs/instances/detail?jobName=&preciseQuery=&minPlanTime=&...
    GET  /v1/{project_id}/jobs/{name}/instances/{instance_id}
    POST /v3/auth/tokens                             -> IAM password login (201 + X-Subject-Token)
    GET  /_sim/stats                                 -> the counters, as JSON (not counted)

State is kept per (project, workspace, job name); the `workspace` header picks
the workspace and its absence means the default one (key `None`).

`SimConfig` adds what a test needs from a misbehaving service: latency, 5xx and
429 answers, connection resets before or after the call took effect, slow
answers, a request-rate limit, AK/SK signature checking with the gateway's
lockout, IAM tokens that expire, and the real service's edges (504 after the work
was done, 504 while the work is still to be done (`late_fraction`: it takes effect
`late_seconds` later), refusals before forwarding, 100 Continue, close-delimited answers, other
error-body shapes, a skewed clock, TLS). `SimStats` counts what happened, above all
how many calls *took effect* per job, which is what exactly-once tests compare.

The parts: `config` (SimConfig, IamUser), `stats` (SimStats), `gateway` (signatures,
tokens, IAM login, rate limit), `service` (job state, actions, list queries), `answers`
(answer and error shapes); this module owns the server, routing and injected faults.

The server is on the hot path of every benchmark, so a request does no logging
and no work beyond what its configuration asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import secrets
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import anyio
import anyio.abc
import orjson
from aiohttp import web

from launcher.simulator.answers import JSON, MSG_NO_API, MSG_THROTTLED, Answer, error, reshape
from launcher.simulator.config import DEFAULT_CONFIG, SimConfig
from launcher.simulator.gateway import Gateway
from launcher.simulator.service import ACTIONS, JobService
from launcher.simulator.stats import SimStats

__all__ = ["Simulator", "running"]

_FAULT_KINDS: Final = (
    "503",
    "500",
    "429",
    "reset_before",
    "reset_after",
    "slow",
    "504_after",
    "refused",
    "late",
)
_REASONS: Final = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request"}
# SO_LINGER on, timeout 0: closing the socket sends RST instead of FIN, like a
# middlebox dropping the connection.
_LINGER_RST: Final = struct.pack("ii", 1, 0)
# How long a stopping server lets in-flight (possibly deliberately slow) answers finish.
_SHUTDOWN_GRACE: Final = 0.25


def _base_url(host: str, port: int, scheme: str = "http") -> str:
    # A wildcard bind is reachable on loopback; report an address a client can use.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class Simulator:
    """The simulated DLF service: state, faults and counters behind one aiohttp application."""

    def __init__(self, config: SimConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.stats = SimStats()
        self.app = web.Application()
        # One catch-all route: aiohttp's router matches on the decoded path, where a
        # job name holding `%2F` would become two segments. We route on the raw path.
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._fault_rng = random.Random(config.seed)
        self._jitter_rng = random.Random(None if config.seed is None else config.seed + 1)
        cumulative = 0.0
        self._fault_table: list[tuple[float, str]] = []
        for kind, fraction in zip(
            _FAULT_KINDS,
            (
                config.fail_503,
                config.fail_500,
                config.fail_429,
                config.reset_before,
                config.reset_after,
                config.slow_fraction,
                config.fail_504_after,
                config.refused_5xx,
                config.late_fraction,
            ),
            strict=True,
        ):
            if fraction > 0:
                cumulative += fraction
                self._fault_table.append((cumulative, kind))
        self._retry_headers = (
            None if config.retry_after is None else {"Retry-After": f"{config.retry_after:g}"}
        )
        self._rid_prefix = secrets.token_hex(8)
        self._rid_counter = 0
        self.gateway = Gateway(config, self.stats)
        self.service = JobService(config, self.stats)
        # Calls taken by the backend that take effect later (`late_fraction`): their
        # timers, and what applies them; applied at once when the server stops.
        self._late: dict[object, tuple[asyncio.TimerHandle, Callable[[], object]]] = {}
        # Answers that need more than aiohttp's plain response (rare, test-only modes).
        self._special = (
            config.continue_100
            or config.close_delimited
            or config.error_shape != "flat"
            or config.clock_skew != 0.0
        )
        self._ssl: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(config.tls_cert, config.tls_key)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; report the base URL (http://127.0.0.1:PORT) via task_status.

        A bind failure raises here, before `started`, so `await tg.start(sim.serve)`
        raises it in the caller.
        """
        async with self.listening(host, port) as base_url:
            task_status.started(base_url)
            await anyio.sleep_forever()

    @asynccontextmanager
    async def listening(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Listen while inside the block; yield the base URL. A bind failure raises OSError.

        aiohttp's server runs on the event loop by itself, so no task is needed
        (`serve` wraps this for task groups).
        """
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=self._ssl)
            await site.start()
            scheme = "https" if self._ssl is not None else "http"
            yield _base_url(host, int(runner.addresses[0][1]), scheme)
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
            self.apply_late()

    @property
    def late_pending(self) -> int:
        """Calls of `late_fraction` taken but not in effect yet."""
        return len(self._late)

    def apply_late(self) -> None:
        """Apply every late call now (the server stops: what the backend took, it does, and
        the counters must show it)."""
        for handle, effect in list(self._late.values()):
            handle.cancel()
            effect()
        self._late.clear()

    def _take_effect_later(
        self, route: str, request: web.Request, parts: list[str], body: bytes, rid: str
    ) -> None:
        """Process a job call `late_seconds` from now, as a backend still at it would."""
        token = object()

        def effect() -> None:
            self._late.pop(token, None)
            self.service.handle(route, request, parts, body, rid)

        handle = asyncio.get_running_loop().call_later(self.config.late_seconds, effect)
        self._late[token] = (handle, effect)

    # -- request handling -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        self._rid_counter += 1
        rid = f"{self._rid_prefix}{self._rid_counter:016x}"
        if path == "/_sim/stats":
            # The observer is not counted: reading the stats must not change them.
            body = orjson.dumps(self.stats.to_json())
            return web.Response(body=body, headers={"X-Request-Id": rid, "Content-Type": JSON})
        stats = self.stats
        stats.requests += 1
        now = time.monotonic()
        stats.arrivals.append(now)
        config = self.config
        delay = config.latency
        if config.latency_jitter:
            delay += self._jitter_rng.uniform(0.0, config.latency_jitter)

        method = request.method
        parts = path.split("/")
        # parts of /v1/{project}/jobs/{name}/{action}: "", "v1", project, "jobs", name, action
        route = "unknown"
        if len(parts) >= 4 and parts[1] == "v1" and parts[2] and parts[3] == "jobs":
            if len(parts) == 7 and parts[4] and parts[5] == "instances" and method == "GET":
                route = "instance"
            elif len(parts) == 6 and parts[4]:
                if method == "POST" and parts[5] in ACTIONS:
                    route = parts[5]
                elif method == "GET" and parts[4] == "instances" and parts[5] == "detail":
                    route = "instances"
            elif len(parts) == 4 and method == "GET":
                route = "jobs"
        elif path == "/v3/auth/tokens" and method == "POST":
            route = "iam"
        stats.by_route[route] += 1

        if route == "unknown":
            answer = error(404, "APIGW.0101", MSG_NO_API, rid)
        elif route == "iam":
            answer = self.gateway.login(await request.read(), rid)
        else:
            body = await request.read() if request.body_exists else b""
            gate = self.gateway.check(request, path, body, rid, now)
            if gate is not None:
                answer = gate
            else:
                faulty = route in ACTIONS or config.faults_on_queries
                fault = self._draw_fault() if faulty and self._fault_table else None
                if fault == "reset_before":
                    return await self._reset(request, delay)
                failed = self._failure(fault, rid) if fault is not None else None
                if failed is not None:
                    answer = failed
                elif fault == "late" and route in ACTIONS:
                    self._take_effect_later(route, request, parts, body, rid)
                    answer = error(504, "APIGW.0203", "Backend timeout.", rid)
                    delay += config.late_answer
                else:
                    answer = self.service.handle(route, request, parts, body, rid)
                    if fault == "reset_after":
                        return await self._reset(request, delay)
                    if fault == "slow":
                        delay += config.slow_seconds
                    elif fault == "504_after" and answer.status < 300:
                        answer = error(504, "APIGW.0203", "Backend timeout.", rid)

        stats.by_status[answer.status] += 1
        if delay > 0:
            await anyio.sleep(delay)
        headers = {"X-Request-Id": rid}
        if answer.body is not None:
            headers["Content-Type"] = JSON
        if answer.headers:
            headers.update(answer.headers)
        if self._special:
            return self._special_answer(request, answer, headers)
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    def _special_answer(
        self, request: web.Request, answer: Answer, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The test-only ways of answering: error shapes, a skewed clock, 100 Continue,
        close-delimited answers."""
        config = self.config
        reshape(answer, config.error_shape)
        if config.clock_skew:
            headers["Date"] = email.utils.formatdate(time.time() + config.clock_skew, usegmt=True)
        transport = request.transport
        if config.continue_100 and transport is not None:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if config.close_delimited and transport is not None:
            # HTTP/1.0, no Content-Length: the answer ends where the connection does.
            reason = _REASONS.get(answer.status, "Error")
            lines = [f"HTTP/1.0 {answer.status} {reason}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (answer.body or b""))
            transport.close()
            # aiohttp fails to write this response to the closed transport and drops it
            # silently, as for a client that went away.
            return web.Response(status=204)
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    def _draw_fault(self) -> str | None:
        """One uniform draw picks at most one fault kind (so the kinds are exclusive)."""
        draw = self._fault_rng.random()
        for threshold, kind in self._fault_table:
            if draw < threshold:
                self.stats.faults[kind] += 1
                return kind
        return None

    def _failure(self, fault: str, rid: str) -> Answer | None:
        """The error answer of a failure fault; None for the faults that still process."""
        if fault == "503":
            answer = error(503, "APIGW.0203", "Backend unavailable.", rid)
        elif fault == "500":
            answer = error(500, "DLF.0000", "Internal server error.", rid)
        elif fault == "429":
            answer = error(429, "APIGW.0308", MSG_THROTTLED, rid)
        elif fault == "refused":
            return error(500, "APIGW.0103", "The backend does not exist.", rid)
        else:
            return None
        if fault != "500":
            answer.headers = self._retry_headers
        return answer

    async def _reset(self, request: web.Request, delay: float) -> web.StreamResponse:
        """Drop the connection without an answer; the client sees a disconnect, not a 500."""
        if delay > 0:
            await anyio.sleep(delay)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            transport.abort()
        # aiohttp now fails to write this response with a ConnectionError, which it
        # treats as a client that went away: it drops the connection silently, no log.
        return web.Response(status=204)


@asynccontextmanager
async def running(
    config: SimConfig = DEFAULT_CONFIG, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[Simulator, str]]:
    """Start a simulator, yield (sim, base_url), stop it on exit.

    No task group is involved, so an exception raised in the block (or a bind
    failure) comes out as itself, not wrapped in an ExceptionGroup.
    """
    sim = Simulator(config)
    async with sim.listening(host, port) as base_url:
        yield sim, base_url
