"""IAM password login: a project-scoped token, cached and renewed before it expires.

:class:`IamPasswordAuth` is one of the :class:`launcher.dlf.auth.Auth` strategies
(:func:`launcher.dlf.auth.auth_from_env` builds it from the environment);
:func:`iam_endpoint_for_region` is the IAM host of a region. Neither the password nor
a token appears in a ``repr``, ``describe()``, log event or exception message made here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from launcher.dlf.answers import error_fields
from launcher.dlf.proxy import Proxy
from launcher.dlf.regions import iam_endpoint
from launcher.errors import AuthFailed
from launcher.logs import get_logger

if TYPE_CHECKING:
    import aiohttp

__all__ = ["CONTROL_CHARACTER", "IamPasswordAuth", "iam_endpoint_for_region"]

_log = get_logger("launcher.dlf.iam")

# C0 controls (CR, LF, NUL, ...), DEL and C1 controls: in a header value they end the
# header (and, doubled, the request), so one in a credential smuggles a request.
# (Here because a token IAM sends back is checked for them too; `launcher.dlf.auth`
# checks the credential variables and URLs with it.)
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")

# A token whose expiry IAM did not state (never seen in practice) is assumed to live this
# long: short enough to be renewed well before IAM's documented 24 h.
_FALLBACK_LIFETIME = 3600.0
# Error texts from IAM are quoted in AuthFailed messages, cut to this length.
_MAX_QUOTE = 200


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why one login attempt failed; `transient` failures are worth another attempt."""

    message: str
    transient: bool


class IamPasswordAuth:
    """IAM password login, project scoped; the token is sent as ``X-Auth-Token``.

    Token life cycle (all times on the monotonic `clock`, so wall-clock jumps and skew
    between us and IAM do not matter):

    * The token is fetched lazily by the first :meth:`apply`; concurrent first calls wait
      for one login (single flight, under an ``anyio.Lock``).
    * Its lifetime is ``expires_at - issued_at`` from IAM's answer (``expires_at`` minus
      our wall clock when ``issued_at`` is missing), counted from when we received it.
    * It is renewed early, when ``ahead = min(refresh_margin, 10 % of lifetime)`` remains:
      for IAM's 24 h tokens and the default margin, 30 min before expiry; a 60 s test
      token, 6 s before.
    * While one task renews, the others keep using the current token (it is still valid)
      instead of queueing behind the login. If the early renewal fails, the current token
      stays in use until ``min(30 s, ahead / 2)`` before expiry, with new attempts every
      so often; only then does :meth:`apply` raise AuthFailed.
    * :meth:`refresh` (the service rejected the token) forces a new login, once: calls that
      wait while another refresh logs in, or that arrive less than `min_relogin_interval`
      seconds (at most ``ahead``) after a login, reuse that login (their requests most
      likely carried the older token; if not, the caller's single retry fails and it stops).

    Each login makes up to `attempts` tries, backing off from `retry_delay` seconds, but only
    after transient failures (network, HTTP 429 or 5xx): a wrong password is never retried,
    since repeated failures lock IAM accounts. Failures raise AuthFailed naming the HTTP
    status and IAM error code, never the password.
    """

    __slots__ = (
        "_attempts",
        "_clock",
        "_domain",
        "_expires_at",
        "_generation",
        "_lock",
        "_min_relogin_interval",
        "_password",
        "_project_id",
        "_quiet_until",
        "_refresh_at",
        "_refresh_margin",
        "_retry_delay",
        "_session",
        "_timeout",
        "_token",
        "_url",
        "_username",
        "proxy",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        iam_endpoint: str,
        username: str,
        password: str,
        domain: str,
        project_id: str,
        refresh_margin: float = 1800.0,
        *,
        attempts: int = 3,
        retry_delay: float = 1.0,
        min_relogin_interval: float = 10.0,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare a login to `iam_endpoint` (``https://iam.{region}.myhuaweicloud.com``)."""
        for label, value in (
            ("username", username),
            ("password", password),
            ("domain", domain),
            ("project id", project_id),
        ):
            if not value:
                raise ValueError(f"IAM {label} is empty")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._session = session
        self._url = iam_endpoint.rstrip("/") + "/v3/auth/tokens"
        self._username = username
        self._password = password
        self._domain = domain
        self._project_id = project_id
        self._refresh_margin = refresh_margin
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._min_relogin_interval = min_relogin_interval
        self._timeout = timeout
        self._clock = clock
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._generation = 0  # number of successful logins
        self._refresh_at = 0.0  # renew from then on
        self._expires_at = 0.0  # stop using the token from then on
        self._quiet_until = 0.0  # refresh() reuses the token until then
        # The forward proxy of the login (set by DlfClient from --proxy / the environment).
        self.proxy: Proxy | None = None

    @property
    def url(self) -> str:
        """The login URL (`.../v3/auth/tokens`): no secret in it."""
        return self._url

    def __repr__(self) -> str:
        return f"IamPasswordAuth({self.describe()!r}, url={self._url!r})"

    def describe(self) -> str:
        """``iam-password user=… domain=… project=…``."""
        return (
            f"iam-password user={self._username} domain={self._domain} project={self._project_id}"
        )

    @property
    def logins(self) -> int:
        """How many logins succeeded so far."""
        return self._generation

    async def apply(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Add ``X-Auth-Token``, logging in first when there is no fresh token."""
        if self._token is None or self._clock() >= self._refresh_at:
            await self._renew_if_due()
        if self._token is None:  # unreachable: _renew_if_due installs a token or raises
            raise AuthFailed("no IAM token")
        headers["X-Auth-Token"] = self._token

    async def refresh(self) -> bool:
        """Force a new login (single flight); True when done. Raises AuthFailed on failure."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return True  # another caller logged in while we waited
            if self._token is not None and self._clock() < self._quiet_until:
                # The rejected request most likely carried the token before this one.
                return True
            await self._login()
            return True

    async def _renew_if_due(self) -> None:
        if self._token is not None and self._clock() < self._expires_at and self._lock.locked():
            return  # someone is renewing; the current token is still good meanwhile
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return  # renewed while we waited for the lock
            try:
                await self._login()
            except AuthFailed as failure:
                now = self._clock()
                if self._token is None or now >= self._expires_at:
                    raise
                # Keep the still-valid token, try again later (not on every request).
                self._refresh_at = now + min(60.0, max(1.0, (self._expires_at - now) / 4))
                _log.warning(
                    "iam.renewal_failed",
                    auth=self.describe(),
                    cause=str(failure),
                    token_valid_for_s=round(self._expires_at - now, 1),
                )

    def _login_body(self) -> bytes:
        return orjson.dumps(
            {
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {
                                "name": self._username,
                                "password": self._password,
                                "domain": {"name": self._domain},
                            }
                        },
                    },
                    "scope": {"project": {"id": self._project_id}},
                }
            }
        )

    def _scrub(self, text: str) -> str:
        # IAM's messages do not echo passwords, but a proxy's error page might: be sure.
        text = text.replace(self._password, "***")
        return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE] + "…"

    async def _login(self) -> None:
        """Log in (with retries for transient failures); install the token or raise."""
        failure = _Failure("no attempt made", transient=False)
        for attempt in range(self._attempts):
            if attempt:
                await anyio.sleep(self._retry_delay * 2 ** (attempt - 1))
            outcome = await self._attempt_login()
            if outcome is None:
                return
            failure = outcome
            if not failure.transient:
                break
            _log.warning("iam.login_retry", auth=self.describe(), cause=failure.message)
        # Raised here, outside any `except`, so no aiohttp exception (whose frames hold
        # the request body) is chained to it.
        raise AuthFailed(
            f"IAM login as {self._username!r} (domain {self._domain!r}) at {self._url} failed: "
            f"{failure.message}"
        )

    async def _attempt_login(self) -> _Failure | None:
        """One POST /v3/auth/tokens; None when a token was installed, else why not."""
        import aiohttp

        wall_now = time.time()
        session = self._session() if callable(self._session) else self._session
        proxy = self.proxy
        headers = {"Content-Type": "application/json;charset=utf8"}
        proxy_headers = None
        if proxy is not None and proxy.authorization is not None:
            # aiohttp sends proxy_headers with a CONNECT (https); a plain http request
            # through a proxy carries the credentials itself.
            proxy_headers = {"Proxy-Authorization": proxy.authorization}
            if self._url.startswith("http://"):
                headers.update(proxy_headers)
        try:
            async with session.post(
                self._url,
                data=self._login_body(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
                proxy=proxy.url if proxy is not None else None,
                proxy_headers=proxy_headers,
            ) as response:
                status = response.status
                raw = await response.read()
                subject = response.headers.get("X-Subject-Token")
        except aiohttp.ClientConnectorCertificateError as error:
            # Not transient: a certificate that did not verify will not verify on retry.
            reason = self._scrub(str(error.certificate_error))
            return _Failure(
                f"IAM's TLS certificate did not verify ({reason}); if IAM uses a private CA, "
                "give its bundle with --ca-bundle",
                transient=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            detail = str(error) or type(error).__name__
            return _Failure(f"cannot reach IAM ({self._scrub(detail)})", transient=True)
        received = self._clock()
        if not 200 <= status < 300:
            code, message = _iam_error(raw)
            text = f"HTTP {status}" + (f" {code}" if code else "")
            if message:
                text += f": {self._scrub(message)}"
            return _Failure(text, transient=status == 429 or status >= 500)
        if not subject:
            return _Failure(f"HTTP {status} without an X-Subject-Token header", transient=False)
        if CONTROL_CHARACTER.search(subject):
            return _Failure(f"HTTP {status}: X-Subject-Token holds a control character", False)
        lifetime = _token_lifetime(raw, wall_now)
        ahead = min(self._refresh_margin, 0.1 * lifetime)
        self._token = subject
        self._generation += 1
        self._quiet_until = received + min(self._min_relogin_interval, ahead)
        self._refresh_at = received + lifetime - ahead
        self._expires_at = received + lifetime - min(30.0, ahead / 2)
        _log.info(
            "iam.login",
            auth=self.describe(),
            logins=self._generation,
            lifetime_s=round(lifetime),
            renew_in_s=round(lifetime - ahead),
        )
        return None


def _iam_error(raw: bytes) -> tuple[str, str]:
    """(error code, message) from an IAM error body, in any shape the SDK reads; empty
    when unknown (see `launcher.dlf.answers`)."""
    try:
        document: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    code, message = error_fields(document)
    return code or "", message or ""


def _parse_iso(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # IAM always says Z; a naive time would be a guess
    return moment.timestamp()


def _token_lifetime(raw: bytes, wall_now: float) -> float:
    """Seconds the token is valid, from ``token.issued_at`` / ``token.expires_at``."""
    try:
        document: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, dict):
        return _FALLBACK_LIFETIME
    expires = _parse_iso(token.get("expires_at"))
    if expires is None:
        return _FALLBACK_LIFETIME
    issued = _parse_iso(token.get("issued_at"))
    # issued_at and expires_at both come from IAM's clock: their difference is immune to
    # skew between IAM and us, which `expires - wall_now` is not.
    lifetime = expires - (issued if issued is not None else wall_now)
    return lifetime if lifetime > 0 else _FALLBACK_LIFETIME


def iam_endpoint_for_region(region: str) -> str:
    """The IAM endpoint of a region, from the SDK's table (see `launcher.dlf.regions`):
    the region's own host, else the SDK's global fallback ``https://iam.myhuaweicloud.com``.
    UsageError for an unknown region id."""
    return iam_endpoint(region)
