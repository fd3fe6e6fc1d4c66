"""Request authentication strategies behind one narrow interface, :class:`Auth`.

* :class:`NoAuth`: nothing (the simulator without checks).
* :class:`AkSkAuth`: ``SDK-HMAC-SHA256`` AK/SK signing (see :mod:`launcher.dlf.signing`).
* :class:`StaticTokenAuth`: a ready IAM token sent as ``X-Auth-Token``.
* :class:`~launcher.dlf.iam.IamPasswordAuth`: IAM password login, token cached and renewed
  before it expires (in :mod:`launcher.dlf.iam`).

:func:`auth_from_env` picks one from the environment, with the official SDK's variable names.
No secret (SK, security token, IAM token, password) appears in a ``repr``, ``describe()``,
log event or exception message made here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from launcher.dlf.iam import CONTROL_CHARACTER, IamPasswordAuth, iam_endpoint_for_region
from launcher.dlf.signing import AkSk, Signer
from launcher.errors import UsageError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ENV_AK",
    "ENV_IAM_DOMAIN",
    "ENV_IAM_ENDPOINT",
    "ENV_IAM_PASSWORD",
    "ENV_IAM_TOKEN",
    "ENV_IAM_USERNAME",
    "ENV_PROJECT_ID",
    "ENV_REGION",
    "ENV_SECURITY_TOKEN",
    "ENV_SK",
    "AkSkAuth",
    "Auth",
    "NoAuth",
    "StaticTokenAuth",
    "auth_from_env",
    "check_credentials",
    "check_url",
]

ENV_AK = "HUAWEICLOUD_SDK_AK"
ENV_SK = "HUAWEICLOUD_SDK_SK"
ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
ENV_PROJECT_ID = "HUAWEICLOUD_SDK_PROJECT_ID"
ENV_REGION = "HUAWEICLOUD_SDK_REGION"
ENV_IAM_ENDPOINT = "HUAWEICLOUD_SDK_IAM_ENDPOINT"  # the official SDK's override, honoured too
ENV_IAM_TOKEN = "HUAWEICLOUD_IAM_TOKEN"
ENV_IAM_USERNAME = "HUAWEICLOUD_IAM_USERNAME"
ENV_IAM_PASSWORD = "HUAWEICLOUD_IAM_PASSWORD"
ENV_IAM_DOMAIN = "HUAWEICLOUD_IAM_DOMAIN"

# Every variable `auth_from_env` may read: each is checked whether or not it is used.
_CREDENTIAL_VARIABLES = (
    ENV_AK,
    ENV_SK,
    ENV_SECURITY_TOKEN,
    ENV_IAM_TOKEN,
    ENV_IAM_USERNAME,
    ENV_IAM_PASSWORD,
    ENV_IAM_DOMAIN,
    ENV_PROJECT_ID,
    ENV_REGION,
    ENV_IAM_ENDPOINT,
)


@runtime_checkable
class Auth(Protocol):
    """How requests are authenticated; one instance serves a whole run, concurrently."""

    async def apply(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Add the authentication headers to `headers`, in place (fresh dict per attempt).

        `path` is the path exactly as sent (percent-encoded). May raise AuthFailed when
        credentials cannot be obtained (e.g. the IAM login is refused).
        """
        ...

    async def refresh(self) -> bool:
        """The service said the credentials must be renewed (APIGW.0307, expired token).

        Get new ones; True when a retry may succeed, False when nothing can change (static
        credentials). May raise AuthFailed when renewing fails.
        """
        ...

    def describe(self) -> str:
        """A one-line description for logs and the ledger, e.g. ``aksk AK=ABCD…``; no secret."""
        ...


class NoAuth:
    """No authentication: for the simulator running without checks."""

    __slots__ = ()

    async def apply(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Add nothing."""

    async def refresh(self) -> bool:
        """Nothing to renew: a retry cannot change the outcome."""
        return False

    def describe(self) -> str:
        """``none``."""
        return "none"

    def __repr__(self) -> str:
        return "NoAuth()"


def _mask(identifier: str) -> str:
    # AKs are identifiers, not secrets, but a prefix is enough to tell keys apart in logs.
    return identifier[:4] + "…" if len(identifier) > 4 else identifier


class AkSkAuth:
    """AK/SK signing; the signature covers method, path, query, headers and body."""

    __slots__ = ("_signer",)

    def __init__(self, signer: Signer) -> None:
        """Sign every request with `signer`."""
        self._signer = signer

    async def apply(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Sign the request (adds X-Sdk-Date, Host, Authorization, maybe X-Security-Token)."""
        self._signer.sign(method, host, path, query, headers, body)

    @property
    def signer(self) -> Signer:
        """The signer: signing never waits, so the client's hot path signs without a coroutine."""
        return self._signer

    async def refresh(self) -> bool:
        """A key pair cannot be renewed here; a rejected signature will not get better."""
        return False

    @property
    def access_key(self) -> str:
        """The AK: an identifier, not a secret (shared limits key on it)."""
        return self._signer.access_key

    def describe(self) -> str:
        """``aksk AK=ABCD…`` (``aksk-temporary`` with a security token)."""
        kind = "aksk-temporary" if self._signer.temporary else "aksk"
        return f"{kind} AK={_mask(self._signer.access_key)}"

    def __repr__(self) -> str:
        return f"AkSkAuth({self.describe()!r})"


class StaticTokenAuth:
    """A ready IAM token (``X-Auth-Token``); it cannot be renewed from here."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        """Send `token` with every request."""
        if not token:
            raise ValueError("IAM token is empty")
        self._token = token

    async def apply(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Add ``X-Auth-Token``."""
        headers["X-Auth-Token"] = self._token

    async def refresh(self) -> bool:
        """No way to get a new token: the user must supply one."""
        return False

    def describe(self) -> str:
        """``iam-token (static)``."""
        return "iam-token (static)"

    def __repr__(self) -> str:
        return "StaticTokenAuth(<hidden>)"


def check_credentials(env: Mapping[str, str]) -> None:
    """Refuse credential variables holding a control character (UsageError, exit 2).

    Every variable `auth_from_env` may read is checked, used or not: a value with
    CR/LF (or any C0/C1 control, DEL) would end a header and start another request.
    The message names the variable and the character's position, never the value.
    """
    for name in _CREDENTIAL_VARIABLES:
        value = env.get(name)
        if value:
            bad = CONTROL_CHARACTER.search(value)
            if bad is not None:
                raise UsageError(
                    f"{name} holds a control character (U+{ord(bad.group()):04X} at position "
                    f"{bad.start() + 1}): refused, nothing was sent; set it again without it"
                )


def check_url(url: str, what: str) -> None:
    """Refuse an endpoint URL with user info (``https://user:pw@host``) or a control character.

    Credentials belong in their variables: in a URL they would reach the Host
    header, logs, the ledger header and every output. The message never holds the URL.
    """
    bad = CONTROL_CHARACTER.search(url)
    if bad is not None:
        raise UsageError(f"{what} holds a control character (U+{ord(bad.group()):04X}): refused")
    _scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]:
        raise UsageError(
            f"{what} has user info (user:password@ before the host): refused; credentials "
            f"belong in their variables ({ENV_AK}/{ENV_SK}, {ENV_IAM_TOKEN}, "
            f"{ENV_IAM_USERNAME}/{ENV_IAM_PASSWORD}), not in the URL"
        )


def auth_from_env(
    env: Mapping[str, str],
    *,
    session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
    iam_endpoint: str | None,
    project_id: str | None,
    region: str | None = None,
) -> Auth:
    """Choose the authentication from environment variables (empty values count as unset).

    Precedence: ``HUAWEICLOUD_SDK_AK`` + ``HUAWEICLOUD_SDK_SK`` (+ optional
    ``HUAWEICLOUD_SDK_SECURITY_TOKEN``) → AK/SK signing; else ``HUAWEICLOUD_IAM_TOKEN`` →
    static token; else ``HUAWEICLOUD_IAM_USERNAME`` + ``HUAWEICLOUD_IAM_PASSWORD`` +
    ``HUAWEICLOUD_IAM_DOMAIN`` → password login, which also needs an IAM endpoint
    (`iam_endpoint`, else ``HUAWEICLOUD_SDK_IAM_ENDPOINT``, else derived from `region`,
    else from ``HUAWEICLOUD_SDK_REGION``: the SDK's order, where the variable wins over
    the region) and a project id (`project_id`, else
    ``HUAWEICLOUD_SDK_PROJECT_ID``). Raises UsageError naming what to set; never echoes a value.
    Every credential is checked first (`check_credentials`).
    """
    check_credentials(env)

    def get(name: str) -> str | None:
        return env.get(name) or None

    ak, sk = get(ENV_AK), get(ENV_SK)
    if ak is not None or sk is not None:
        if ak is None or sk is None:
            have, lack = (ENV_AK, ENV_SK) if ak is not None else (ENV_SK, ENV_AK)
            raise UsageError(f"{have} is set but {lack} is not: set both, or neither")
        return AkSkAuth(Signer(AkSk(ak, sk, get(ENV_SECURITY_TOKEN))))
    if get(ENV_SECURITY_TOKEN) is not None:
        raise UsageError(f"{ENV_SECURITY_TOKEN} is set but {ENV_AK} and {ENV_SK} are not")

    token = get(ENV_IAM_TOKEN)
    if token is not None:
        return StaticTokenAuth(token)

    names = (ENV_IAM_USERNAME, ENV_IAM_PASSWORD, ENV_IAM_DOMAIN)
    present = [name for name in names if get(name) is not None]
    if not present:
        raise UsageError(
            "no credentials: set "
            f"{ENV_AK} and {ENV_SK} (and {ENV_SECURITY_TOKEN} for temporary keys), "
            f"or {ENV_IAM_TOKEN}, "
            f"or {ENV_IAM_USERNAME}, {ENV_IAM_PASSWORD} and {ENV_IAM_DOMAIN}"
        )
    missing = [name for name in names if name not in present]
    if missing:
        raise UsageError(f"IAM password login needs {', '.join(missing)} too")
    endpoint = iam_endpoint or get(ENV_IAM_ENDPOINT)
    region = region or get(ENV_REGION)
    if endpoint is None and region is not None:
        endpoint = iam_endpoint_for_region(region)
    if endpoint is None:
        raise UsageError(
            f"IAM password login needs an IAM endpoint: give the region "
            f"(or {ENV_REGION}), or set {ENV_IAM_ENDPOINT}"
        )
    check_url(endpoint, "the IAM endpoint")
    if not endpoint.startswith(("https://", "http://")):
        raise UsageError(f"IAM endpoint must be an http(s) URL, got {endpoint!r}")
    project = project_id or get(ENV_PROJECT_ID)
    if project is None:
        raise UsageError(f"IAM password login needs a project id (or {ENV_PROJECT_ID})")
    return IamPasswordAuth(
        session,
        endpoint,
        env[ENV_IAM_USERNAME],
        env[ENV_IAM_PASSWORD],
        env[ENV_IAM_DOMAIN],
        project,
    )
