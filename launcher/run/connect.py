"""From options and environment to an authenticated `DlfClient`.

Shared by every command that talks to the service (`run`, `replay`,
`loadtest`): resolve the endpoint (a URL, a region, or `sim` for the embedded
simulator), pick the credentials from the environment, log in if that is the
method, and hand back a client whose connection pool matches the concurrency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from launcher.config import RunOptions
from launcher.dlf.auth import Auth, NoAuth, auth_from_env, check_credentials, check_url
from launcher.dlf.client import DlfClient, endpoint_for_region
from launcher.dlf.proxy import ProxySettings
from launcher.errors import UsageError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DESCRIPTOR_RESERVE", "Connection", "connect", "ensure_descriptors", "resolve_endpoint"]

# Descriptors a run needs besides one per connection: stdio, the ledger and its
# fold, the event loop's own, the IAM session, Redis, the embedded simulator.
DESCRIPTOR_RESERVE = 64


def resolve_endpoint(options: RunOptions, env: Mapping[str, str] | None = None) -> str:
    """`--endpoint` as given, else derived from `--region`; UsageError when neither is set.

    Checked first, so that a run refuses them before anything is read, written or
    sent: endpoint URLs with user info or a control character (`check_url`), and,
    with `env`, credential variables holding a control character (`check_credentials`).
    """
    if options.iam_endpoint:
        check_url(options.iam_endpoint, "--iam-endpoint")
    if env is not None and options.endpoint != "sim":
        check_credentials(env)
    if options.endpoint:
        check_url(options.endpoint, "--endpoint")
        return options.endpoint
    if options.region:
        return endpoint_for_region(options.region)
    raise UsageError(
        "no endpoint: give --endpoint URL, --region ID, or --endpoint sim for the simulator"
    )


def ensure_descriptors(concurrency: int, flag: str = "--concurrency") -> None:
    """Make sure `concurrency` connections fit under the open-file limit, before any is made.

    Each request in flight holds a socket. Without enough descriptors the
    connections past the limit fail as "connect" errors one by one (and the
    run reads as a service outage); instead the soft limit is raised towards
    the hard one when that suffices (forked workers inherit it), and
    otherwise the run stops now, exit 2, naming descriptors and the limit.
    """
    try:
        import resource
    except ImportError:  # not POSIX: no such limit to check
        return
    need = concurrency + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
        except (ValueError, OSError):
            pass
    limit = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    raise UsageError(
        f"{flag} {concurrency} needs about {need} file descriptors (one socket per request "
        f"in flight, plus {DESCRIPTOR_RESERVE}), but the open-file limit (ulimit -n) is "
        f"{soft} (hard limit {limit}): lower {flag} or raise the limit"
    )


@dataclass(frozen=True, slots=True)
class Connection:
    """An authenticated client, the URL it calls, and what the user asked for."""

    client: DlfClient
    url: str  # the base URL requests go to (the embedded simulator's own, for `sim`)
    endpoint: str  # as given: a URL or `sim`

    @property
    def simulated(self) -> bool:
        """True when the embedded simulator answers."""
        return self.endpoint == "sim"


@asynccontextmanager
async def connect(
    options: RunOptions, env: Mapping[str, str], *, concurrency: int | None = None
) -> AsyncIterator[Connection]:
    """Yield a `Connection`; credentials are obtained (and checked) before it is yielded.

    Raises UsageError for a missing endpoint or credentials and AuthFailed
    when a login is refused; nothing has been sent to DLF in either case.
    """
    endpoint = resolve_endpoint(options, env)
    async with _base_url(endpoint, options) as (url, simulated):

        def make_auth(session: Callable[[], aiohttp.ClientSession]) -> Auth:
            if simulated:
                return NoAuth()
            # --iam-endpoint, else HUAWEICLOUD_SDK_IAM_ENDPOINT, else the region's (as the SDK).
            return auth_from_env(
                env,
                session=session,
                iam_endpoint=options.iam_endpoint,
                project_id=options.project_id,
                region=options.region,
            )

        client = DlfClient(
            url,
            make_auth,
            concurrency=concurrency if concurrency is not None else options.concurrency,
            timeout=options.timeout,
            ca_bundle=options.ca_bundle,
            proxies=ProxySettings.resolve(options.proxy, env) if not simulated else None,
        )
        async with client:
            await client.authenticate()
            yield Connection(client, url, endpoint)


@asynccontextmanager
async def _base_url(endpoint: str, options: RunOptions) -> AsyncIterator[tuple[str, bool]]:
    if endpoint != "sim":
        yield endpoint, False
        return
    from launcher.simulator import SimConfig, running

    try:
        config = SimConfig.from_mapping(options.sim)
    except ValueError as error:
        raise UsageError(f"[sim]: {error}") from None
    async with running(config) as (_sim, url):
        yield url, True
