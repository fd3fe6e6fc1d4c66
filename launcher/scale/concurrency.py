"""`--shared-concurrency N`: at most N requests in flight across every launcher on a key.

A semaphore in Redis made of leases: a sorted set whose members are slot
tokens and whose scores are their expiry on Redis `TIME`. Taking a slot is one
script run that first drops expired leases (a launcher that died frees its
slots within `LEASE` seconds), then adds the token if fewer than N remain.
`SharedSemaphore.renew_forever` extends the leases this launcher holds every
`LEASE / 3` seconds, so a slow request never loses its slot.

Waiting is polled with backoff, but by one task per launcher at a time (the
others queue behind it, first come first served), so a blocked launcher costs
Redis at most one script run per `POLL_MAX` seconds; a slot freed here wakes
the poller at once. The slot is taken after the rate limit's slot, around the
HTTP request alone (`SharedConcurrencyService`).

If Redis fails, requests go on without the shared cap (each launcher's own
`--concurrency` still holds) and a warning is logged; the semaphore is tried
again after `RETRY_EVERY` seconds. A slot is only a bound on load, never a
reason to stop sending.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from launcher.logs import get_logger, redact_url, scrub

if TYPE_CHECKING:
    from launcher.flow.dispatch import Service
    from launcher.models import Action, Job, JobStatus, Reply

__all__ = ["ACQUIRE", "RENEW", "SharedConcurrencyService", "SharedSemaphore"]

LEASE = 15.0  # seconds a slot outlives the launcher holding it
POLL_MIN = 0.002  # seconds between tries while the fleet is at its cap, at first...
POLL_MAX = 0.05  # ...and at most
RETRY_EVERY = 2.0  # seconds without the shared cap after Redis failed

ACQUIRE = r"""
-- KEYS[1]: the slots (sorted set: token -> lease expiry, ms on Redis TIME).
-- ARGV: 1 limit, 2 token, 3 lease (ms). Returns 1 when the token now holds a slot.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""

RENEW = r"""
-- KEYS[1]: the slots. ARGV: 1 lease (ms), then the tokens to renew (those still held).
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1])) end
return renewed
"""

_LOST: tuple[type[BaseException], ...] = (RedisError, OSError)

log = get_logger("launcher.scale.limits")


class SharedSemaphore:
    """At most `limit` slots held at once by every launcher using `key`."""

    def __init__(
        self, redis: Redis, key: str, limit: int, *, url: str = "redis", lease: float = LEASE
    ) -> None:
        """Slots on `key` (a sorted set) leased for `lease` seconds at a time; `url` is
        only ever shown without its password."""
        self._redis = redis
        self._key = key
        self._limit = limit
        self._url = url
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self._prefix = uuid.uuid4().hex[:12]  # this launcher's tokens: no host, no secret
        self._count = 0
        self._held: set[str] = set()
        self._turn = anyio.Lock()  # one poller per launcher; the others queue fairly
        self._freed = anyio.Event()
        self._off_until = 0.0  # monotonic time until which Redis is not tried again
        self.waits = 0  # tries that found the fleet at its cap
        self.unguarded = 0  # slots skipped because Redis failed

    @property
    def key(self) -> str:
        """The Redis key of the slots."""
        return self._key

    @property
    def held(self) -> int:
        """Slots this launcher holds now."""
        return len(self._held)

    async def acquire(self) -> str | None:
        """Wait for a slot; its token, or None when Redis failed (go on without one)."""
        self._count += 1
        token = f"{self._prefix}:{self._count}"
        delay = POLL_MIN
        async with self._turn:
            while True:
                if time.monotonic() < self._off_until:
                    self.unguarded += 1
                    return None
                try:
                    taken = await self._script(
                        ACQUIRE, 1, self._key, self._limit, token, self._lease_ms
                    )
                except _LOST as error:
                    self._lose(error)
                    self.unguarded += 1
                    return None
                if taken:
                    self._held.add(token)
                    return token
                self.waits += 1
                freed = self._freed
                with anyio.move_on_after(delay * random.uniform(0.5, 1.0)):
                    await freed.wait()  # a slot freed here: try again at once
                delay = min(delay * 2, POLL_MAX)

    async def release(self, token: str | None) -> None:
        """Give a slot back (None: nothing was held). Never raises: an unreleased lease expires."""
        if token is None:
            return
        self._held.discard(token)
        self._freed.set()
        self._freed = anyio.Event()
        # Shielded: a cancelled request still gives its slot back; if Redis fails,
        # the lease runs out by itself.
        with anyio.CancelScope(shield=True), contextlib.suppress(*_LOST):
            await self._redis.zrem(self._key, token)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the `async with`."""
        token = await self.acquire()
        try:
            yield
        finally:
            await self.release(token)

    async def renew_forever(self) -> None:
        """Extend the leases held here every third of a lease, until cancelled."""
        while True:
            await anyio.sleep(self._lease / 3)
            held = list(self._held)
            if held:
                try:
                    await self._script(RENEW, 1, self._key, self._lease_ms, *held)
                except _LOST as error:
                    self._lose(error)

    async def _script(self, script: str, *args: Any) -> Any:
        name = _SHA1[script]
        try:
            return await self._redis.evalsha(name, *args)
        except NoScriptError:
            return await self._redis.eval(script, *args)

    def _lose(self, error: BaseException) -> None:
        first = time.monotonic() >= self._off_until
        self._off_until = time.monotonic() + RETRY_EVERY
        if first:
            log.warning(
                "redis failed: requests go on without the shared concurrency cap",
                redis=redact_url(self._url),
                error=scrub(f"{type(error).__name__}: {error}", self._url),
                retry_in_s=RETRY_EVERY,
            )


# EVALSHA names each script by its digest; EVAL is the fallback when Redis lacks it.
_SHA1 = {
    script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for script in (ACQUIRE, RENEW)
}


class SharedConcurrencyService:
    """A `Service` whose requests to DLF each hold a slot of a `SharedSemaphore`."""

    def __init__(self, inner: Service, semaphore: SharedSemaphore) -> None:
        """Wrap `inner` (the DLF client)."""
        self._inner = inner
        self._semaphore = semaphore

    async def call(self, job: Job, action: Action) -> Reply:
        """`inner.call`, holding a shared slot."""
        async with self._semaphore.slot():
            return await self._inner.call(job, action)

    async def job_status(self, job: Job) -> JobStatus:
        """`inner.job_status`, holding a shared slot."""
        async with self._semaphore.slot():
            return await self._inner.job_status(job)

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        """`inner.instances`, holding a shared slot."""
        async with self._semaphore.slot():
            return await self._inner.instances(job, min_plan_time_ms)

    async def refresh_auth(self) -> bool:
        """`inner.refresh_auth` (IAM, not DLF: no slot)."""
        return await self._inner.refresh_auth()
