"""A local imitation of the DataArts Factory (DLF) job API, for tests, the demo and benchmarks.

`Simulator` is a real aiohttp server that answers the calls the launcher makes,
with the real paths, headers, status codes and error bodies:

    POST /v1/{project_id}/jobs/{name}/start          -> 204, job status SCHEDULING
    POST /v1/{project_id}/jobs/{name}/stop           -> 204, job status STOPPED
    POST /v1/{project_id}/jobs/{name}/run-immediate  -> 200 {"instanceId": n}
    GET  /v1/{project_id}/jobs?jobName=&jobType=&limit=&offset=
    GET  /v1/{project_id}/jobs/instances/detail?jobName=&minPlanTime=&maxPlanTime=&status=&...
    POST /v3/auth/tokens                             -> IAM password login (201 + X-Subject-Token)
    GET  /_sim/stats                                 -> the counters, as JSON (not counted)

State is kept per (project, workspace, job name); the `workspace` header picks
the workspace and its absence means the default one (key `None`).

`SimConfig` adds what a test needs from a misbehaving service: latency, 5xx and
429 answers, connection resets before or after the call took effect, slow
answers, a request-rate limit, AK/SK signature checking with the gateway's
lockout, and IAM tokens that expire. `SimStats` counts what happened, above all
how many calls *took effect* per job, which is what exactly-once tests compare.

The server is on the hot path of every benchmark, so a request does no logging
and no work beyond what its configuration asks for.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import secrets
import socket
import struct
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

import anyio
import anyio.abc
import orjson
from aiohttp import web

from launcher.dlf.signing import verify

__all__ = [
    "DEFAULT_CONFIG",
    "IamUser",
    "JobKey",
    "SimConfig",
    "SimStats",
    "Simulator",
    "running",
]

JobKey = tuple[str, str | None, str]
"""(project id, workspace or None for the default one, job name): what state is kept per."""

_JSON: Final = "application/json;charset=UTF-8"
_ACTIONS: Final = frozenset({"start", "stop", "run-immediate"})
_PARAM_TYPES: Final = frozenset({"variable", "constants"})
_FAULT_KINDS: Final = ("503", "500", "429", "reset_before", "reset_after", "slow")
# SO_LINGER on, timeout 0: closing the socket sends RST instead of FIN, like a
# middlebox dropping the connection.
_LINGER_RST: Final = struct.pack("ii", 1, 0)
# How long a stopping server lets in-flight (possibly deliberately slow) answers finish.
_SHUTDOWN_GRACE: Final = 0.25
_ACCESS_KEY = re.compile(r"Access=([^,\s]+)")

_MSG_NO_API: Final = "The API does not exist or has not been published in the environment."
_MSG_THROTTLED: Final = "The throttling threshold has been reached"
_MSG_BAD_SIGNATURE: Final = "Incorrect IAM authentication information: verify aksk signature fail"
_MSG_LOCKED: Final = (
    "Incorrect IAM authentication information: AK access failed to reach the limit,forbidden."
)
_MSG_BAD_TOKEN: Final = "Incorrect IAM authentication information: decrypt token fail"
_MSG_NO_TOKEN: Final = "Incorrect IAM authentication information: x-auth-token not found"
_MSG_EXPIRED_TOKEN: Final = "The token must be updated."
_MSG_NO_JOB: Final = "The job does not exists."
_MSG_INVALID: Final = "The request parameter is invalid"


@dataclass(frozen=True)
class IamUser:
    """An IAM user the simulated `/v3/auth/tokens` accepts."""

    name: str
    password: str = field(repr=False)
    domain: str

    @classmethod
    def parse(cls, spec: str) -> IamUser:
        """Parse `NAME:PASSWORD:DOMAIN`; the password may itself contain `:`."""
        name, sep1, rest = spec.partition(":")
        password, sep2, domain = rest.rpartition(":")
        if not (sep1 and sep2 and name and domain):
            raise ValueError("an IAM user must look like NAME:PASSWORD:DOMAIN")
        return cls(name, password, domain)


@dataclass(frozen=True)
class SimConfig:
    """How the simulator behaves. Every field has a harmless default: a fast, perfect service.

    Fault fractions are probabilities per request. They are mutually exclusive
    (one uniform draw per request picks at most one), so their sum must be <= 1.
    """

    latency: float = 0.0
    """Seconds added to every answer (except `/_sim/stats`)."""
    latency_jitter: float = 0.0
    """Up to this many more seconds, uniformly drawn, added to `latency`."""
    fail_503: float = 0.0
    """Fraction of job calls answered 503 (nothing takes effect)."""
    fail_500: float = 0.0
    """Fraction of job calls answered 500 (nothing takes effect)."""
    fail_429: float = 0.0
    """Fraction of job calls answered 429 APIGW.0308 (nothing takes effect)."""
    retry_after: float | None = None
    """When set, the `Retry-After` seconds sent with `fail_429` and `fail_503` answers."""
    reset_before: float = 0.0
    """Fraction of job calls whose connection is reset before processing: no effect."""
    reset_after: float = 0.0
    """Fraction of job calls that take effect, then have their connection reset unanswered."""
    slow_fraction: float = 0.0
    """Fraction of job calls that take effect on arrival but are answered `slow_seconds` late."""
    slow_seconds: float = 2.0
    """Extra delay of a slow answer."""
    faults_on_queries: bool = False
    """Whether job-list and instance-list calls get the faults above too."""
    rate_limit: float | None = None
    """Requests/s accepted on `/v1` routes (token bucket); the excess gets 429 APIGW.0308."""
    rate_burst: float | None = None
    """Bucket size; default `max(1, rate_limit / 20)`, i.e. 50 ms worth of requests."""
    known_jobs: frozenset[str] | None = None
    """When set, only these job names exist (in every project and workspace)."""
    missing_prefix: str | None = None
    """Job names starting with this do not exist (400 DLF.0100)."""
    aksk: Mapping[str, str] | None = field(default=None, repr=False)
    """AK -> SK. When set, `/v1` calls must carry a valid SDK-HMAC-SHA256 signature."""
    lockout_threshold: int = 5
    """Bad signatures in a row after which an AK is locked, as on the real gateway."""
    lockout_seconds: float = 300.0
    """How long a locked AK gets 401 for every request."""
    max_skew: float = 900.0
    """Largest accepted distance, in seconds, between `X-Sdk-Date` and the server clock."""
    iam_users: tuple[IamUser, ...] = ()
    """Users `/v3/auth/tokens` accepts. When set (or `tokens`), `/v1` calls need a token."""
    tokens: frozenset[str] = field(default=frozenset(), repr=False)
    """Tokens that are valid without a login and never expire."""
    token_ttl: float = 86400.0
    """Lifetime, in seconds, of a token issued by `/v3/auth/tokens`."""
    seed: int | None = None
    """Seed of the fault and jitter draws; the same seed and arrival order give the same faults."""

    def __post_init__(self) -> None:
        # Normalise collections so a config is a snapshot, whatever the caller passed.
        if self.known_jobs is not None:
            object.__setattr__(self, "known_jobs", frozenset(self.known_jobs))
        if self.aksk is not None:
            object.__setattr__(self, "aksk", MappingProxyType(dict(self.aksk)))
        object.__setattr__(self, "iam_users", tuple(self.iam_users))
        object.__setattr__(self, "tokens", frozenset(self.tokens))
        fractions = {
            "fail_503": self.fail_503,
            "fail_500": self.fail_500,
            "fail_429": self.fail_429,
            "reset_before": self.reset_before,
            "reset_after": self.reset_after,
            "slow_fraction": self.slow_fraction,
        }
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if sum(fractions.values()) > 1.0 + 1e-9:
            raise ValueError("the fault fractions add up to more than 1")
        for name, value in (
            ("latency", self.latency),
            ("latency_jitter", self.latency_jitter),
            ("slow_seconds", self.slow_seconds),
            ("lockout_seconds", self.lockout_seconds),
            ("max_skew", self.max_skew),
            ("retry_after", self.retry_after or 0.0),
        ):
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.token_ttl <= 0:
            raise ValueError(f"token_ttl must be > 0, got {self.token_ttl}")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0, got {self.rate_limit}")
        if self.rate_burst is not None and not self.rate_burst >= 1:
            raise ValueError(f"rate_burst must be >= 1, got {self.rate_burst}")
        if self.lockout_threshold < 1:
            raise ValueError(f"lockout_threshold must be >= 1, got {self.lockout_threshold}")
        if self.missing_prefix == "":
            raise ValueError("missing_prefix must not be empty (every job would be missing)")

    @classmethod
    def from_mapping(cls, d: Mapping[str, object]) -> SimConfig:
        """Build a config from a TOML `[sim]` table (keys as the field names, `-` or `_`).

        Types are checked (an int is accepted where a float is expected, a bool
        never is). `aksk` is a table `{AK = "SK"}` or a list of `"AK:SK"`;
        `iam_users` a list of `{name, password, domain}` tables or
        `"NAME:PASSWORD:DOMAIN"` strings. An unknown key raises ValueError naming it.
        """
        kwargs: dict[str, Any] = {}
        for raw_key, value in d.items():
            key = raw_key.replace("-", "_")
            convert = _CONVERTERS.get(key)
            if convert is None:
                raise ValueError(f"unknown key {raw_key!r}")
            kwargs[key] = convert(raw_key, value)
        return cls(**kwargs)


DEFAULT_CONFIG: Final = SimConfig()
"""A fast, fault-free service where every job exists."""


def _as_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _as_opt_float(key: str, value: object) -> float | None:
    return None if value is None else _as_float(key, value)


def _as_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    return value


def _as_opt_int(key: str, value: object) -> int | None:
    return None if value is None else _as_int(key, value)


def _as_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    return value


def _as_opt_str(key: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def _as_str_set(key: str, value: object) -> frozenset[str]:
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(v, str) for v in value
    ):
        raise ValueError(f"{key}: expected a list of strings")
    return frozenset(value)


def _as_opt_str_set(key: str, value: object) -> frozenset[str] | None:
    return None if value is None else _as_str_set(key, value)


def _as_aksk(key: str, value: object) -> Mapping[str, str] | None:
    # Messages never repeat the value: it holds secret keys.
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
            raise ValueError(f"{key}: expected a table of AK = SK strings")
        return dict(value)
    if isinstance(value, list | tuple):
        pairs: dict[str, str] = {}
        for item in value:
            ak, sep, sk = item.partition(":") if isinstance(item, str) else ("", "", "")
            if not (sep and ak and sk):
                raise ValueError(f"{key}: each entry must look like AK:SK")
            pairs[ak] = sk
        return pairs
    raise ValueError(f"{key}: expected a table of AK = SK, or a list of AK:SK")


def _as_iam_users(key: str, value: object) -> tuple[IamUser, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key}: expected a list of users")
    users: list[IamUser] = []
    for item in value:
        if isinstance(item, str):
            try:
                users.append(IamUser.parse(item))
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        elif isinstance(item, Mapping):
            name, password, domain = item.get("name"), item.get("password"), item.get("domain")
            if set(item) - {"name", "password", "domain"} or not (
                isinstance(name, str) and isinstance(password, str) and isinstance(domain, str)
            ):
                raise ValueError(
                    f"{key}: each user needs string name, password and domain, nothing else"
                )
            users.append(IamUser(name, password, domain))
        else:
            raise ValueError(f"{key}: each user is a table or NAME:PASSWORD:DOMAIN")
    return tuple(users)


_CONVERTERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "latency": _as_float,
    "latency_jitter": _as_float,
    "fail_503": _as_float,
    "fail_500": _as_float,
    "fail_429": _as_float,
    "retry_after": _as_opt_float,
    "reset_before": _as_float,
    "reset_after": _as_float,
    "slow_fraction": _as_float,
    "slow_seconds": _as_float,
    "faults_on_queries": _as_bool,
    "rate_limit": _as_opt_float,
    "rate_burst": _as_opt_float,
    "known_jobs": _as_opt_str_set,
    "missing_prefix": _as_opt_str,
    "aksk": _as_aksk,
    "lockout_threshold": _as_int,
    "lockout_seconds": _as_float,
    "max_skew": _as_float,
    "iam_users": _as_iam_users,
    "tokens": _as_str_set,
    "token_ttl": _as_float,
    "seed": _as_opt_int,
}


@dataclass(eq=False)
class SimStats:
    """What the simulator saw. `/_sim/stats` serves `to_json()`; it is itself never counted.

    `starts`, `stops` and `runs` count the calls that TOOK EFFECT per job
    (a `reset_after` call counts, a `reset_before` one does not), which is what
    exactly-once tests compare. `by_status` counts answers sent; resets send
    none and are in `faults` instead, so `sum(by_status) + resets == requests`.
    """

    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind: 503, 500, 429, reset_before, reset_after, slow."""
    starts: Counter[JobKey] = field(default_factory=Counter)
    stops: Counter[JobKey] = field(default_factory=Counter)
    runs: Counter[JobKey] = field(default_factory=Counter)
    rate_limited: int = 0
    """429s from `rate_limit` (not from `fail_429`)."""
    bad_signatures: int = 0
    """401s for an invalid AK/SK signature (not counting answers to a locked AK)."""
    locked_out: int = 0
    """401s answered because the AK was locked after repeated bad signatures."""
    arrivals: array[float] = field(default_factory=lambda: array("d"))
    """`time.monotonic()` at the arrival of each counted request, in arrival order."""

    @property
    def resets(self) -> int:
        """Connections reset instead of answered."""
        return self.faults["reset_before"] + self.faults["reset_after"]

    def took_effect(
        self, action: str, project: str, name: str, workspace: str | None = None
    ) -> int:
        """How many `action` calls (start, stop, run-immediate) took effect for one job."""
        counter = {"start": self.starts, "stop": self.stops, "run-immediate": self.runs}[action]
        return counter[(project, workspace, name)]

    def achieved_rate(self) -> float:
        """Requests/s between the first and the last arrival (0 with fewer than two)."""
        count = len(self.arrivals)
        if count < 2:
            return 0.0
        span = self.arrivals[-1] - self.arrivals[0]
        return (count - 1) / span if span > 0 else 0.0

    def busiest_window(self, seconds: float = 0.1) -> int:
        """The most arrivals within any window of `seconds` (half-open, any start time)."""
        arrivals = self.arrivals
        best = 0
        low = 0
        for high, now in enumerate(arrivals):
            while now - arrivals[low] >= seconds:
                low += 1
            best = max(best, high - low + 1)
        return best

    def to_json(self) -> dict[str, object]:
        """The counters as plain JSON types (job keys become objects)."""
        keys = sorted(
            set(self.starts) | set(self.stops) | set(self.runs),
            key=lambda k: (k[0], k[1] or "", k[2]),
        )
        return {
            "requests": self.requests,
            "by_route": dict(self.by_route),
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "resets": self.resets,
            "rate_limited": self.rate_limited,
            "bad_signatures": self.bad_signatures,
            "locked_out": self.locked_out,
            "arrivals": len(self.arrivals),
            "achieved_rate": self.achieved_rate(),
            "busiest_100ms": self.busiest_window(0.1),
            "effects": [
                {
                    "project": k[0],
                    "workspace": k[1],
                    "name": k[2],
                    "start": self.starts[k],
                    "stop": self.stops[k],
                    "run-immediate": self.runs[k],
                }
                for k in keys
            ],
        }

    def reset(self) -> None:
        """Zero every counter (the simulated jobs keep their state)."""
        self.requests = 0
        self.rate_limited = 0
        self.bad_signatures = 0
        self.locked_out = 0
        for counter in (self.by_route, self.by_status, self.faults):
            counter.clear()
        for effects in (self.starts, self.stops, self.runs):
            effects.clear()
        self.arrivals = array("d")


class _TokenBucket:
    """`rate` tokens/s, at most `burst` saved; one token per accepted request."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class _Job:
    __slots__ = ("last_instance_status", "status")

    def __init__(self) -> None:
        self.status = "STOPPED"
        self.last_instance_status: str | None = None


class _Answer:
    """A decided answer, built into an aiohttp response only when it is sent."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def _error(status: int, code: str, message: str, rid: str) -> _Answer:
    return _Answer(
        status, orjson.dumps({"error_code": code, "error_msg": message, "request_id": rid})
    )


def _base_url(host: str, port: int) -> str:
    # A wildcard bind is reachable on loopback; report an address a client can use.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
            ),
            strict=True,
        ):
            if fraction > 0:
                cumulative += fraction
                self._fault_table.append((cumulative, kind))
        self._bucket: _TokenBucket | None = None
        if config.rate_limit is not None:
            burst = config.rate_burst or max(1.0, config.rate_limit / 20)
            self._bucket = _TokenBucket(config.rate_limit, burst)
        self._retry_headers = (
            None if config.retry_after is None else {"Retry-After": f"{config.retry_after:g}"}
        )
        self._jobs: dict[tuple[str, str | None], dict[str, _Job]] = {}
        self._instances: dict[tuple[str, str | None], list[dict[str, object]]] = {}
        self._next_instance_id = 1_000_000
        self._rid_prefix = secrets.token_hex(8)
        self._rid_counter = 0
        self._token_auth = bool(config.iam_users or config.tokens)
        self._issued: dict[str, float] = dict.fromkeys(config.tokens, math.inf)
        self._users = {(u.name, u.domain): u.password for u in config.iam_users}
        self._ak_failures: dict[str, int] = {}
        self._ak_locked_until: dict[str, float] = {}

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
            site = web.TCPSite(runner, host, port, backlog=1024)
            await site.start()
            yield _base_url(host, int(runner.addresses[0][1]))
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    # -- request handling -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        self._rid_counter += 1
        rid = f"{self._rid_prefix}{self._rid_counter:016x}"
        if path == "/_sim/stats":
            # The observer is not counted: reading the stats must not change them.
            body = orjson.dumps(self.stats.to_json())
            return web.Response(body=body, headers={"X-Request-Id": rid, "Content-Type": _JSON})
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
            if len(parts) == 6 and parts[4]:
                if method == "POST" and parts[5] in _ACTIONS:
                    route = parts[5]
                elif method == "GET" and parts[4] == "instances" and parts[5] == "detail":
                    route = "instances"
            elif len(parts) == 4 and method == "GET":
                route = "jobs"
        elif path == "/v3/auth/tokens" and method == "POST":
            route = "iam"
        stats.by_route[route] += 1

        if route == "unknown":
            answer = _error(404, "APIGW.0101", _MSG_NO_API, rid)
        elif route == "iam":
            answer = self._login(await request.read(), rid)
        else:
            body = await request.read() if request.body_exists else b""
            gate = self._gate(request, path, body, rid, now)
            if gate is not None:
                answer = gate
            else:
                faulty = route in _ACTIONS or config.faults_on_queries
                fault = self._draw_fault() if faulty and self._fault_table else None
                if fault == "reset_before":
                    return await self._reset(request, delay)
                failed = self._failure(fault, rid) if fault is not None else None
                if failed is not None:
                    answer = failed
                else:
                    answer = self._dispatch(route, request, parts, body, rid)
                    if fault == "reset_after":
                        return await self._reset(request, delay)
                    if fault == "slow":
                        delay += config.slow_seconds

        stats.by_status[answer.status] += 1
        if delay > 0:
            await anyio.sleep(delay)
        headers = {"X-Request-Id": rid}
        if answer.body is not None:
            headers["Content-Type"] = _JSON
        if answer.headers:
            headers.update(answer.headers)
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    def _draw_fault(self) -> str | None:
        """One uniform draw picks at most one fault kind (so the kinds are exclusive)."""
        draw = self._fault_rng.random()
        for threshold, kind in self._fault_table:
            if draw < threshold:
                self.stats.faults[kind] += 1
                return kind
        return None

    def _failure(self, fault: str, rid: str) -> _Answer | None:
        """The error answer of a failure fault; None for the faults that still process."""
        if fault == "503":
            answer = _error(503, "APIGW.0203", "Backend unavailable.", rid)
        elif fault == "500":
            answer = _error(500, "DLF.0000", "Internal server error.", rid)
        elif fault == "429":
            answer = _error(429, "APIGW.0308", _MSG_THROTTLED, rid)
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

    def _gate(
        self, request: web.Request, path: str, body: bytes, rid: str, now: float
    ) -> _Answer | None:
        """Authentication, then the rate limit: an answer when the call stops at the gateway."""
        config = self.config
        headers = request.headers
        if self._token_auth:
            token = headers.get("X-Auth-Token")
            if token is not None:
                expires = self._issued.get(token)
                if expires is None:
                    return _error(401, "APIGW.0301", _MSG_BAD_TOKEN, rid)
                if time.time() >= expires:
                    return _error(401, "APIGW.0307", _MSG_EXPIRED_TOKEN, rid)
            elif config.aksk is None:
                return _error(401, "APIGW.0301", _MSG_NO_TOKEN, rid)
            else:
                denied = self._check_signature(config.aksk, request, path, body, rid, now)
                if denied is not None:
                    return denied
        elif config.aksk is not None:
            denied = self._check_signature(config.aksk, request, path, body, rid, now)
            if denied is not None:
                return denied
        if self._bucket is not None and not self._bucket.take(now):
            self.stats.rate_limited += 1
            return _error(429, "APIGW.0308", _MSG_THROTTLED, rid)
        return None

    def _check_signature(
        self,
        aksk: Mapping[str, str],
        request: web.Request,
        path: str,
        body: bytes,
        rid: str,
        now: float,
    ) -> _Answer | None:
        headers = request.headers
        match = _ACCESS_KEY.search(headers.get("Authorization", ""))
        ak = match.group(1) if match else None
        if ak is not None:
            locked_until = self._ak_locked_until.get(ak)
            if locked_until is not None:
                if now < locked_until:
                    self.stats.locked_out += 1
                    return _error(401, "APIGW.0301", _MSG_LOCKED, rid)
                del self._ak_locked_until[ak]
        reason = verify(
            request.method,
            path,
            list(request.query.items()),
            headers,
            body,
            aksk.get,
            now=datetime.now(UTC),
            max_skew=self.config.max_skew,
        )
        if reason is None:
            if ak is not None:
                self._ak_failures.pop(ak, None)
            return None
        self.stats.bad_signatures += 1
        if ak is not None:
            failures = self._ak_failures.get(ak, 0) + 1
            if failures >= self.config.lockout_threshold:
                self._ak_locked_until[ak] = now + self.config.lockout_seconds
                self._ak_failures.pop(ak, None)
            else:
                self._ak_failures[ak] = failures
        return _error(401, "APIGW.0301", f"{_MSG_BAD_SIGNATURE}, {reason}", rid)

    def _dispatch(
        self, route: str, request: web.Request, parts: list[str], body: bytes, rid: str
    ) -> _Answer:
        try:
            project = unquote(parts[2], errors="strict")
            # The name is one raw segment: `%2F` inside it is part of the name.
            name = unquote(parts[4], errors="strict") if route in _ACTIONS else ""
        except UnicodeDecodeError:
            return _error(400, "DLF.3051", f"{_MSG_INVALID}: path is not UTF-8", rid)
        workspace = request.headers.get("workspace") or None
        if route == "jobs":
            return self._list_jobs(request, project, workspace, rid)
        if route == "instances":
            return self._list_instances(request, project, workspace, rid)
        problem = _body_problem(body)
        if problem is not None:
            return _error(400, "DLF.3051", f"{_MSG_INVALID}: {problem}", rid)
        if not self._exists(name):
            return _error(400, "DLF.0100", _MSG_NO_JOB, rid)
        space = self._jobs.get((project, workspace))
        if space is None:
            space = self._jobs[(project, workspace)] = {}
        job = space.get(name)
        if job is None:
            job = space[name] = _Job()
        key = (project, workspace, name)
        if route == "start":
            job.status = "SCHEDULING"
            self.stats.starts[key] += 1
            return _Answer(204)
        if route == "stop":
            job.status = "STOPPED"
            self.stats.stops[key] += 1
            return _Answer(204)
        self._next_instance_id += 1
        instance_id = self._next_instance_id
        now_ms = int(time.time() * 1000)
        self._instances.setdefault((project, workspace), []).append(
            {
                "jobName": name,
                "instanceId": instance_id,
                "status": "running",
                "planTime": now_ms,
                "startTime": now_ms,
                "endTime": None,
            }
        )
        job.last_instance_status = "running"
        self.stats.runs[key] += 1
        return _Answer(200, orjson.dumps({"instanceId": instance_id}))

    def _exists(self, name: str) -> bool:
        config = self.config
        if config.missing_prefix is not None and name.startswith(config.missing_prefix):
            return False
        return config.known_jobs is None or name in config.known_jobs

    def _list_jobs(
        self, request: web.Request, project: str, workspace: str | None, rid: str
    ) -> _Answer:
        query = request.query
        try:
            limit = _int_param(query.get("limit"), 10, 1, 1000)
            offset = _int_param(query.get("offset"), 0, 0, None)
        except ValueError as exc:
            return _error(400, "DLF.3051", f"{_MSG_INVALID}: {exc}", rid)
        pattern = query.get("jobName", "")
        job_type = query.get("jobType")
        space = self._jobs.get((project, workspace), {})
        # Without a configured job list every name exists, so list the ones seen so far.
        candidates = space.keys() if self.config.known_jobs is None else self.config.known_jobs
        names: list[str] = []
        if job_type in (None, "", "BATCH"):
            names = sorted(n for n in candidates if pattern in n and self._exists(n))
        jobs = []
        for name in names[offset : offset + limit]:
            job = space.get(name)
            jobs.append(
                {
                    "name": name,
                    "jobType": "BATCH",
                    "status": job.status if job else "STOPPED",
                    "lastInstanceStatus": job.last_instance_status if job else None,
                }
            )
        return _Answer(200, orjson.dumps({"total": len(names), "jobs": jobs}))

    def _list_instances(
        self, request: web.Request, project: str, workspace: str | None, rid: str
    ) -> _Answer:
        query = request.query
        try:
            limit = _int_param(query.get("limit"), 10, 1, 1000)
            offset = _int_param(query.get("offset"), 0, 0, None)
            min_plan = _int_param(query.get("minPlanTime"), 0, 0, None)
            max_plan = _int_param(query.get("maxPlanTime"), 2**63 - 1, 0, None)
        except ValueError as exc:
            return _error(400, "DLF.3051", f"{_MSG_INVALID}: {exc}", rid)
        job_name = query.get("jobName") or None
        status = query.get("status") or None
        found = [
            instance
            for instance in reversed(self._instances.get((project, workspace), []))  # newest first
            if (job_name is None or instance["jobName"] == job_name)
            and (status is None or instance["status"] == status)
            and min_plan <= _ms(instance["planTime"]) <= max_plan
        ]
        page = found[offset : offset + limit]
        return _Answer(200, orjson.dumps({"total": len(found), "instances": page}))

    def _login(self, body: bytes, rid: str) -> _Answer:
        """IAM `POST /v3/auth/tokens` with a project-scoped password identity."""
        try:
            document = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            document = None
        auth = document.get("auth") if isinstance(document, dict) else None
        identity = _dig(auth, "identity")
        user = _dig(identity, "password", "user")
        project = _dig(auth, "scope", "project")
        methods = _dig(identity, "methods")
        name, password = _dig(user, "name"), _dig(user, "password")
        domain = _dig(user, "domain", "name")
        if not (
            isinstance(methods, list)
            and "password" in methods
            and isinstance(name, str)
            and isinstance(password, str)
            and isinstance(domain, str)
            and isinstance(project, dict)
            and isinstance(project.get("id") or project.get("name"), str)
        ):
            return _iam_error(400, "IAM.0011", "Request parameter error.", rid)
        expected = self._users.get((name, domain))
        if expected is None or not secrets.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        ):
            return _iam_error(401, "IAM.0002", "The username or password is wrong.", rid)
        token = "MIIsim" + secrets.token_urlsafe(48)
        issued = time.time()
        expires = issued + self.config.token_ttl
        self._issued[token] = expires
        payload = {
            "token": {
                "methods": ["password"],
                "issued_at": _iso(issued),
                "expires_at": _iso(expires),
                "user": {"name": name, "domain": {"name": domain}},
                "project": {k: v for k, v in project.items() if k in ("id", "name")},
            }
        }
        return _Answer(201, orjson.dumps(payload), {"X-Subject-Token": token})


def _iam_error(status: int, code: str, message: str, rid: str) -> _Answer:
    # IAM's own error shape (keystone-like "error" object), plus the fields every
    # answer of this simulator carries.
    title = "Unauthorized" if status == 401 else "Bad Request"
    body = {
        "error": {"code": status, "message": message, "title": title},
        "error_code": code,
        "error_msg": message,
        "request_id": rid,
    }
    return _Answer(status, orjson.dumps(body))


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms(value: object) -> int:
    return value if isinstance(value, int) else 0


def _int_param(raw: str | None, default: int, low: int, high: int | None) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{value} is out of range")
    return value


def _body_problem(body: bytes) -> str | None:
    """Why a start/stop/run-immediate body is invalid, or None (as the service validates it)."""
    if not body.strip():
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not JSON"
    if not isinstance(document, dict):
        return "body is not a JSON object"
    start_date = document.get("start_date")
    if start_date is not None and (isinstance(start_date, bool) or not isinstance(start_date, int)):
        return "start_date must be an integer"
    ignore = document.get("ignore_first_self_dep")
    if ignore is not None and not isinstance(ignore, bool):
        return "ignore_first_self_dep must be a boolean"
    params = document.get("jobParams")
    if params is None:
        return None
    if not isinstance(params, list):
        return "jobParams must be a list"
    for index, param in enumerate(params):
        if not isinstance(param, dict):
            return f"jobParams[{index}] must be an object"
        name, value = param.get("name"), param.get("value")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            return f"jobParams[{index}].name must be a string of 1 to 64 characters"
        if not isinstance(value, str) or len(value) > 1024:
            return f"jobParams[{index}].value must be a string of at most 1024 characters"
        # The API calls the field paramType; the official SDK's JobParam calls it type.
        param_type = param.get("paramType", param.get("type"))
        if param_type is not None and param_type not in _PARAM_TYPES:
            return f"jobParams[{index}].paramType must be variable or constants"
    return None


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
