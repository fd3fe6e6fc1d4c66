"""Scale-out: one rate limit, and one adaptive throttling curve, shared through Redis.

DLF limits requests per user and per API, whoever sends them. Launchers on
several hosts therefore pace against one budget: with `--redis URL`, every
launcher using the same limit key (by default derived from the endpoint's
host and the AK, never the secret) takes its send slots from one token bucket
kept in Redis.

**The bucket.** `launcher.scale.lua.RESERVE` is the GCRA of
`launcher.flow.pacing.TokenBucket`, run atomically inside Redis on Redis `TIME`, so
hosts' clocks do not matter. Each send is one EVALSHA (EVAL when Redis lacks
the script): it claims the next slot of the whole fleet and answers how long
this caller must sleep for it. Slots are evenly spaced across launchers, so
the fleet's pace is as even as one launcher's; nothing is reserved ahead, so
nothing is wasted when a launcher stops. A claim costs one round trip (about
0.2 ms on loopback; one launcher can make over 6,000 a second through its
`POOL_SIZE` connections), far below what a DLF limit allows, so slots are not
batched: a batch would make one launcher's sends bunch up.

**The adaptive curve.** `launcher.flow.adaptive.AdaptiveRate` cuts the rate once
per congestion episode and climbs back along a CUBIC curve. Shared, its state
splits in two:

- *What is shared* is the curve: W_max, K and the cut's time on Redis `TIME`,
  plus a `RateMeter` of the fleet's grants (see `launcher.scale.lua` for
  how its first half second differs). The script computes the curve at
  every reservation, exactly as `AdaptiveRate._climb` does (including "never
  more than twice what is being sent", over the fleet's sends) and paces at
  min(ceiling, curve).
- *What stays local* is the decision to cut: `SharedAdaptiveRate` is an
  `AdaptiveRate` (same episodes, accepted fraction, β, C, floor) whose inputs
  are the fleet's: its meter answers with the send rate the script measured,
  and its episode counts the fleet's grants since the last cut. When it cuts,
  the new W_max and K ride on its next reservation; the script applies them
  only if the cut is based on the newest generation. A second launcher seeing
  the same burst of 429s therefore does not cut again: whichever cut lands
  first ends the episode for everyone (one cut per episode, fleet-wide).
- Every reservation answers with the current generation and curve; a
  launcher seeing a newer generation adopts it: its `_last_cut` moves to the
  cut (so answers to requests sent before it no longer count, as after its
  own cut), its episode restarts, and its sleepers claim new slots, because
  the script forgot every slot claimed at the old rate. A launcher joining
  late starts on the fleet's curve, not at its ceiling.

**Losing Redis.** At start, an unreachable Redis is a `UsageError` (exit 2),
or with `--redis-optional` a warning and local limits. Mid-run, a failed
reservation switches this launcher to a local `Pacer` at *its share* of the
last shared rate (its grants over the fleet's, measured just before), so a
fleet that loses Redis together keeps its combined pace instead of multiplying
it; the adaptive controller keeps working locally at that scale. Every two
seconds `SharedLimits.serve` tries Redis again and goes back to sharing. No
launcher ever sends faster than its ceiling; only a fleet that loses Redis in
its first half second, before a share is measured, falls back to the whole
last rate each (logged as share 1.0). No secret is ever sent to Redis.

`--shared-concurrency N` adds a lease-based semaphore on `KEY:concurrency`
(`launcher.scale.concurrency`). The modules: `shared` (this: the pacer and
wiring), `shared_lua` (the script), `shared_adaptive` (the controller),
`shared_concurrency`, `shared_url` (redaction).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from launcher.dlf.auth import AkSkAuth, Auth
from launcher.errors import UsageError
from launcher.flow.adaptive import BUCKET, MIN_RATE, SCALE, SMOOTH, RateMeter
from launcher.flow.pacing import STALL, Pacer, TokenBucket, format_rate
from launcher.logs import get_logger, redact_url, scrub
from launcher.scale.adaptive import FleetMeter, SharedAdaptiveRate, SharedCut, SharedState
from launcher.scale.concurrency import (
    ACQUIRE,
    RENEW,
    SharedConcurrencyService,
    SharedSemaphore,
)
from launcher.scale.lua import RESERVE, RESERVE_SHA1

if TYPE_CHECKING:
    from launcher.config import RunOptions
    from launcher.flow.dispatch import Service

__all__ = [
    "FleetMeter",
    "SharedAdaptiveRate",
    "SharedCut",
    "SharedLimits",
    "SharedPacer",
    "SharedState",
    "access_key",
    "connect_shared",
    "default_limit_key",
    "open_shared_limits",
]

KEY_PREFIX = "launcher:"
KEY_TTL_MS = 3_600_000  # the shared state outlives an idle hour, then Redis frees it
POOL_SIZE = 8  # reservations in flight per launcher: each holds a connection for ~0.2 ms
TIMEOUT = 2.0  # seconds for Redis to accept a connection, or to answer
RETRY_EVERY = 2.0  # seconds between attempts to reach Redis again after losing it
MIN_SHARE = 0.001  # the smallest share of the fleet a launcher assumes it had

# What a lost Redis looks like: redis-py's errors, and the OS's beneath them.
_LOST: tuple[type[BaseException], ...] = (RedisError, OSError)

log = get_logger("launcher.scale.limits")


def access_key(auth: Auth | None) -> str | None:
    """The AK of AK/SK credentials (an identifier, not a secret); None for other methods."""
    if isinstance(auth, AkSkAuth):
        return auth.access_key
    return None


def default_limit_key(endpoint: str, auth: Auth | None, *, simulated: bool = False) -> str:
    """`launcher:` and 16 hex digits of SHA-256 over the endpoint's host and the AK.

    DLF's limits are per user and per API, so launchers sharing credentials
    against one endpoint share a key. Only a digest of the AK goes to Redis,
    and the secret key never enters it. With the embedded simulator, or
    credentials without an AK (an IAM token or password), the endpoint alone.
    """
    if simulated:
        material = "sim"
    else:
        parts = urlsplit(endpoint)
        material = (parts.hostname or endpoint).lower()
        if parts.port is not None:
            material += f":{parts.port}"
        ak = access_key(auth)
        if ak:
            material += "|" + ak
    return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()[:16]


class SharedPacer:
    """A `RateGate` whose slots come from the Redis script: one round trip per send.

    `rate` is the fleet's rate (what the script paces everyone at), also while
    Redis is lost and this launcher paces alone at its share of it.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        ceiling: float,
        burst: int = 1,
        flow: SharedAdaptiveRate | None = None,
        url: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Pace through `redis` on `key`; `url` is only ever shown without its password."""
        self._redis = redis
        self._key = key
        self._ceiling = ceiling
        self._burst = burst
        self._flow = flow
        self._url = url
        self._shown_url = redact_url(url)
        self._clock = clock
        self._rate = ceiling
        self._generation = 0  # bumped when slots claimed earlier are void
        self._known = 0  # the newest shared generation seen
        self._granted = RateMeter()  # this launcher's grants, for its share of the fleet
        self._fleet_rate = 0.0
        self._share = 1.0
        self._fallback: Pacer | None = None
        # A fair (FIFO) local queue for the pooled connections: waiting for one is not
        # Redis failing, so it has no timeout, and no caller starves under load.
        self._in_flight = anyio.Semaphore(POOL_SIZE)
        self.round_trips = 0
        self.stale = 0  # answers that predated a cut
        self.reclaimed = 0  # slots given up after a cut while sleeping
        self.late = 0  # slots given up after waking far too late
        self.losses = 0

    @property
    def key(self) -> str:
        """The Redis key of the shared limit."""
        return self._key

    @property
    def rate(self) -> float:
        """The fleet's rate now (requests/s; 0: unlimited)."""
        fallback = self._fallback
        if fallback is not None:
            return fallback.rate / self._share
        return self._rate

    @property
    def shared(self) -> bool:
        """False while Redis is lost and this launcher paces alone."""
        return self._fallback is None

    @property
    def share(self) -> float:
        """This launcher's part of the fleet's sends, as last estimated (1.0: unknown)."""
        return self._share

    def set_rate(self, rate: float, now: float) -> None:
        """The adaptive controller's verdict, in the fleet's numbers.

        While shared, the script is the authority and this only voids the
        slots claimed at the old rate after a cut made here (the first new
        claim publishes it). While Redis is lost, it paces the local bucket
        at this launcher's share of `rate`.
        """
        fallback = self._fallback
        if fallback is not None:
            fallback.set_rate(rate * self._share, now)
            return
        flow = self._flow
        if flow is not None and flow.pending_cut is not None:
            self._generation += 1

    async def wait(self) -> None:
        """Sleep until this caller's slot of the shared limit (or the local one without Redis)."""
        clock = self._clock
        while True:
            fallback = self._fallback
            if fallback is not None:
                await fallback.wait()
                return
            try:
                state = await self.reserve()
            except _LOST as error:
                self._lose(error)
                continue
            if state is None:
                self.stale += 1
                continue  # claimed before a cut already seen: that slot is void
            if state.delay <= 0.0:
                return
            generation = self._generation
            due = clock() + state.delay
            await anyio.sleep(state.delay)
            if self._generation != generation:
                self.reclaimed += 1
                continue  # a cut while we slept: claim a slot at the new rate
            # As `Pacer.wait`: woken far too late, every other sleeper's slot has
            # passed too, and all of them going now would be a burst.
            if clock() - due <= max(2.0 / state.rate, STALL):
                return
            self.late += 1

    async def reserve(self) -> SharedState | None:
        """Claim the next shared slot (one script run), publishing a pending cut with it.

        Returns the script's answer, already applied here and to the adaptive
        controller; None when the answer predates a cut already seen (the
        script forgot that slot), or when Redis was lost while this caller
        queued. Raises redis-py's errors when Redis fails.
        """
        flow = self._flow
        async with self._in_flight:
            if self._fallback is not None:
                return None  # lost meanwhile: do not make every queued caller time out too
            cut = flow.pending_cut if flow is not None else None  # the newest, once queued
            args = (
                self._ceiling,
                self._burst,
                SCALE,
                MIN_RATE,
                BUCKET,
                SMOOTH,
                cut.based_on if cut is not None else -1,
                cut.last_max if cut is not None else 0,
                cut.window if cut is not None else 0,
                KEY_TTL_MS,
            )
            self.round_trips += 1
            try:
                reply = await self._redis.evalsha(RESERVE_SHA1, 1, self._key, *args)
            except NoScriptError:  # Redis restarted, or a cluster node never saw SCRIPT LOAD
                reply = await self._redis.eval(RESERVE, 1, self._key, *args)
        state = SharedState.parse(reply)
        if state.generation < self._known:
            return None
        now = self._clock()
        self._rate = state.rate
        self._fleet_rate = state.fleet_rate
        self._granted.add(now)
        if state.generation > self._known:
            if self._known:
                self._generation += 1  # the script forgot every slot claimed before the cut
            self._known = state.generation
        if flow is not None:
            flow.adopt(state, now)
        return state

    def _lose(self, error: BaseException) -> None:
        if self._fallback is not None:
            return  # another caller saw it first
        now = self._clock()
        mine, fleet = self._granted.rate_at(now), self._fleet_rate
        share = min(1.0, max(MIN_SHARE, mine / fleet)) if mine > 0.0 and fleet > 0.0 else 1.0
        self._share = share
        local = self._rate * share
        self._fallback = Pacer(TokenBucket(local, self._burst), self._clock)
        self.losses += 1
        if self._flow is not None:
            self._flow.go_local(share)
        log.warning(
            "redis lost: pacing alone at this launcher's share of the shared rate",
            redis=self._shown_url,
            error=scrub(f"{type(error).__name__}: {error}", self._url),
            share=round(share, 3),
            rate=format_rate(local),
            retry_every_s=RETRY_EVERY,
        )

    async def probe(self) -> bool:
        """After a loss, try Redis again; True (sharing again) when it answers."""
        if self._fallback is None:
            return True
        try:
            await self._redis.ping()
        except _LOST:
            return False
        self._fallback = None
        if self._flow is not None:
            self._flow.go_shared()
        log.warning("redis reachable again: the shared limit applies", redis=self._shown_url)
        return True


class SharedLimits:
    """The Redis client with the pacer, adaptive controller and semaphore built on it.

    Use as an async context manager, or run `serve` beside the dispatcher: it
    brings a lost Redis back into use, renews the semaphore's leases, and
    closes the client when cancelled.
    """

    def __init__(
        self,
        redis: Redis,
        pacer: SharedPacer,
        flow: SharedAdaptiveRate | None,
        shown_url: str,
        semaphore: SharedSemaphore | None = None,
    ) -> None:
        """Own `redis` (closed by `aclose`)."""
        self.redis = redis
        self.pacer = pacer
        self.flow = flow
        self.shown_url = shown_url
        self.semaphore = semaphore

    @property
    def key(self) -> str:
        """The Redis key of the shared limit."""
        return self.pacer.key

    def service(self, inner: Service) -> Service:
        """`inner`, or with `--shared-concurrency` `inner` holding a shared slot per request."""
        if self.semaphore is None:
            return inner
        return SharedConcurrencyService(inner, self.semaphore)

    async def serve(self) -> None:
        """Until cancelled: retry a lost Redis every `RETRY_EVERY` seconds and renew the
        semaphore's leases; then close the client."""
        try:
            async with anyio.create_task_group() as tg:
                if self.semaphore is not None:
                    tg.start_soon(self.semaphore.renew_forever)
                while True:
                    await anyio.sleep(RETRY_EVERY)
                    await self.pacer.probe()
        finally:
            pacer, flow = self.pacer, self.flow
            log.info(
                "shared rate limit: done",
                limit_key=pacer.key,
                round_trips=pacer.round_trips,
                reclaimed=pacer.reclaimed + pacer.stale,
                late=pacer.late,
                redis_lost=pacer.losses,
                cuts=flow.cuts if flow is not None else 0,
                shared_cuts=flow.adopted if flow is not None else 0,
            )
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to Redis."""
        await self.redis.aclose()

    async def __aenter__(self) -> SharedLimits:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def connect_shared(
    url: str,
    key: str,
    *,
    ceiling: float,
    burst: int = 1,
    adaptive: bool = True,
    concurrency: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> SharedLimits:
    """Connect to Redis at `url`, load the scripts, and build the shared pacer on `key`
    (and with `concurrency` > 0 a semaphore of that many slots on `key:concurrency`).

    Raises UsageError naming the URL without its password when Redis cannot be
    reached or used.
    """
    shown = redact_url(url)
    try:
        pool = ConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE + 2,  # the reservations, a probe, and the start check
            socket_connect_timeout=TIMEOUT,
            socket_timeout=TIMEOUT,
            # One quick retry covers a pooled connection the server closed; a Redis
            # that stays down is the fallback's business, not a retry loop's.
            retry=Retry(NoBackoff(), 1),
            client_name="launcher",
        )
    except (ValueError, TypeError) as error:
        raise UsageError(f"--redis {shown}: {scrub(str(error), url)}") from None
    redis = Redis.from_pool(pool)
    try:
        await redis.ping()
        for script in (RESERVE, ACQUIRE, RENEW) if concurrency > 0 else (RESERVE,):
            await redis.script_load(script)
    except _LOST as error:
        with anyio.CancelScope(shield=True):
            await redis.aclose()
        raise UsageError(
            f"cannot use Redis at {shown}: {scrub(str(error), url) or type(error).__name__}"
        ) from None
    flow = SharedAdaptiveRate(ceiling) if adaptive else None
    pacer = SharedPacer(redis, key, ceiling=ceiling, burst=burst, flow=flow, url=url, clock=clock)
    semaphore = (
        SharedSemaphore(redis, f"{key}:concurrency", concurrency, url=url) if concurrency else None
    )
    return SharedLimits(redis, pacer, flow, shown, semaphore)


async def open_shared_limits(
    options: RunOptions, *, endpoint: str, auth: Auth, simulated: bool
) -> SharedLimits | None:
    """The shared limits `launcher run --redis` asks for; None: use local limits.

    `endpoint`, `auth` and `simulated` describe where this launcher sends: by
    default launchers that send to the same place with the same account share.

    Raises UsageError when Redis cannot be used, unless `--redis-optional`:
    then it logs a warning and returns None.
    """
    url = options.redis
    if not url:
        if options.shared_concurrency:
            raise UsageError("--shared-concurrency needs --redis (or LAUNCHER_REDIS_URL)")
        return None
    key = options.limit_key or default_limit_key(endpoint, auth, simulated=simulated)
    try:
        limits = await connect_shared(
            url,
            key,
            ceiling=options.rate,
            burst=options.burst,
            adaptive=options.adaptive,
            concurrency=options.shared_concurrency,
        )
    except UsageError as error:
        if not options.redis_optional:
            raise
        log.warning(
            "redis unreachable: this launcher applies its own limits only (--redis-optional)",
            error=str(error),
        )
        return None
    log.info(
        "shared rate limit",
        redis=limits.shown_url,
        limit_key=key,
        rate=format_rate(options.rate),
        adaptive=options.adaptive,
        shared_concurrency=options.shared_concurrency or None,
    )
    return limits
