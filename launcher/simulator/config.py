"""How the simulator behaves: `SimConfig` (every knob, with harmless defaults) and `IamUser`.

`SimConfig.from_mapping` builds one from a TOML `[sim]` table with checked types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = ["DEFAULT_CONFIG", "ERROR_SHAPES", "IamUser", "SimConfig"]

ERROR_SHAPES: Final = ("flat", "camel", "code", "nested")


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
    fail_504_after: float = 0.0
    """Fraction of job calls that TAKE EFFECT, then are answered 504 APIGW.0203 (Backend
    timeout), as a gateway answers when DLF did the work too slowly."""
    refused_5xx: float = 0.0
    """Fraction of job calls the gateway refuses before forwarding: 500 APIGW.0103, no effect."""
    late_fraction: float = 0.0
    """Fraction of start/stop/run-immediate calls answered 504 APIGW.0203 (Backend timeout)
    that TAKE EFFECT only `late_seconds` after they arrived: the backend was still at it, so
    a status check in between still sees the old state."""
    late_seconds: float = 1.0
    """How long after its arrival a `late_fraction` call takes effect."""
    late_answer: float = 0.0
    """Seconds before the 504 of a `late_fraction` call (0: at once), on top of `latency`."""
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
    real_time_jobs: frozenset[str] = frozenset()
    """Job names that are REAL_TIME jobs in the job list (the others are BATCH)."""
    continue_100: bool = False
    """Precede every answer with an interim `100 Continue`."""
    close_delimited: bool = False
    """Send every answer as HTTP/1.0 without Content-Length, then close the connection."""
    error_shape: str = "flat"
    """Error bodies: `flat` {error_code, error_msg}, `camel` {errorCode, errorMsg},
    `code` {code, message}, `nested` {"error": {"code", "message"}}."""
    instance_id_string: bool = False
    """run-immediate answers `{"instanceId": "123"}` (a string) instead of a number."""
    clock_skew: float = 0.0
    """Seconds the service's clock is ahead of ours (negative: behind): its `Date` header
    and the plan times of new instances."""
    tls_cert: str | None = None
    """PEM certificate (chain) file: serve https with it (needs `tls_key`)."""
    tls_key: str | None = None
    """PEM private key file of `tls_cert`."""
    scheduled_fraction: float = 0.0
    """A seeded estate: this fraction of the jobs (per workspace, drawn per job from
    `seed`) reads SCHEDULING before any call; the others STOPPED."""
    run_seconds: float | None = None
    """How long a run-immediate instance stays `running` before it ends (None: forever)."""
    run_fail: float = 0.0
    """Fraction of run-immediate instances that end `fail` (the others `success`); seeded."""
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
        object.__setattr__(self, "real_time_jobs", frozenset(self.real_time_jobs))
        if self.error_shape not in ERROR_SHAPES:
            raise ValueError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if not math.isfinite(self.clock_skew):
            raise ValueError("clock_skew must be a finite number")
        fractions = {
            "fail_503": self.fail_503,
            "fail_500": self.fail_500,
            "fail_429": self.fail_429,
            "reset_before": self.reset_before,
            "reset_after": self.reset_after,
            "slow_fraction": self.slow_fraction,
            "fail_504_after": self.fail_504_after,
            "refused_5xx": self.refused_5xx,
            "late_fraction": self.late_fraction,
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
            ("late_seconds", self.late_seconds),
            ("late_answer", self.late_answer),
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
    "fail_504_after": _as_float,
    "refused_5xx": _as_float,
    "late_fraction": _as_float,
    "late_seconds": _as_float,
    "late_answer": _as_float,
    "real_time_jobs": _as_str_set,
    "continue_100": _as_bool,
    "close_delimited": _as_bool,
    "error_shape": _as_opt_str,
    "instance_id_string": _as_bool,
    "clock_skew": _as_float,
    "tls_cert": _as_opt_str,
    "tls_key": _as_opt_str,
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
    "scheduled_fraction": _as_float,
    "run_seconds": _as_opt_float,
    "run_fail": _as_float,
    "seed": _as_opt_int,
}
