"""The simulated API gateway and IAM: AK/SK signatures with lockout, IAM tokens, rate limit.

`Gateway.check` decides whether a `/v1` call stops at the gateway (401, 429) before
the service sees it; `Gateway.login` is IAM's `POST /v3/auth/tokens`.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
from aiohttp import web

from launcher.dlf.signing import verify
from launcher.simulator.answers import (
    MSG_BAD_SIGNATURE,
    MSG_BAD_TOKEN,
    MSG_EXPIRED_TOKEN,
    MSG_LOCKED,
    MSG_NO_TOKEN,
    MSG_THROTTLED,
    Answer,
    error,
    iam_error,
)
from launcher.simulator.config import SimConfig
from launcher.simulator.stats import SimStats

__all__ = ["Gateway", "TokenBucket"]

_ACCESS_KEY = re.compile(r"Access=([^,\s]+)")


class TokenBucket:
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


class Gateway:
    """Authentication and rate limiting in front of the simulated service."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self.config = config
        self.stats = stats
        self._bucket: TokenBucket | None = None
        if config.rate_limit is not None:
            burst = config.rate_burst or max(1.0, config.rate_limit / 20)
            self._bucket = TokenBucket(config.rate_limit, burst)
        self._token_auth = bool(config.iam_users or config.tokens)
        self._issued: dict[str, float] = dict.fromkeys(config.tokens, math.inf)
        self._users = {(u.name, u.domain): u.password for u in config.iam_users}
        self._ak_failures: dict[str, int] = {}
        self._ak_locked_until: dict[str, float] = {}

    def check(
        self, request: web.Request, path: str, body: bytes, rid: str, now: float
    ) -> Answer | None:
        """Authentication, then the rate limit: an answer when the call stops at the gateway."""
        config = self.config
        headers = request.headers
        if self._token_auth:
            token = headers.get("X-Auth-Token")
            if token is not None:
                expires = self._issued.get(token)
                if expires is None:
                    return error(401, "APIGW.0301", MSG_BAD_TOKEN, rid)
                if time.time() >= expires:
                    return error(401, "APIGW.0307", MSG_EXPIRED_TOKEN, rid)
            elif config.aksk is None:
                return error(401, "APIGW.0301", MSG_NO_TOKEN, rid)
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
            return error(429, "APIGW.0308", MSG_THROTTLED, rid)
        return None

    def _check_signature(
        self,
        aksk: Mapping[str, str],
        request: web.Request,
        path: str,
        body: bytes,
        rid: str,
        now: float,
    ) -> Answer | None:
        headers = request.headers
        match = _ACCESS_KEY.search(headers.get("Authorization", ""))
        ak = match.group(1) if match else None
        if ak is not None:
            locked_until = self._ak_locked_until.get(ak)
            if locked_until is not None:
                if now < locked_until:
                    self.stats.locked_out += 1
                    return error(401, "APIGW.0301", MSG_LOCKED, rid)
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
        return error(401, "APIGW.0301", f"{MSG_BAD_SIGNATURE}, {reason}", rid)

    def login(self, body: bytes, rid: str) -> Answer:
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
            return iam_error(400, "IAM.0011", "Request parameter error.", rid)
        expected = self._users.get((name, domain))
        if expected is None or not secrets.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        ):
            return iam_error(401, "IAM.0002", "The username or password is wrong.", rid)
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
        return Answer(201, orjson.dumps(payload), {"X-Subject-Token": token})


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
