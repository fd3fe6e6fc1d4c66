"""The one place that talks to DLF: job calls turned into `Reply` values.

`DlfClient.call(job, action)` turns a job into a signed request and the answer
into a `Reply`; every other module sees only `Reply` values, never HTTP.
Requests go through `launcher.dlf.transport.HttpPool` (lean keep-alive HTTP/1.1:
the per-request hot path); an aiohttp session serves the rare IAM login.
Transport failures become data too: a failure before any byte was written is
`Failure.CONNECT` (safe to resend; `Failure.TLS` when the certificate did not
verify), anything later is ambiguous; the reason is kept in `Reply.detail`.

Status checks and listings (`query`, `job_status`, `instances`, and the paged
primitives of `launcher.dlf.listing`) use a second, small pool that also keeps the
`Date` header, so the hot pool reads no header it does not need.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from launcher import __version__
from launcher.dlf import listing
from launcher.dlf.answers import reply_from_answer, service_clock
from launcher.dlf.auth import AkSkAuth, Auth
from launcher.dlf.iam import IamPasswordAuth
from launcher.dlf.listing import QueryAnswer
from launcher.dlf.paths import path_segment
from launcher.dlf.proxy import ProxySettings
from launcher.dlf.regions import dlf_endpoint
from launcher.dlf.signing import Prepared, Signer, canonical_query
from launcher.dlf.transport import HttpPool, Lost, NotSent
from launcher.errors import UsageError
from launcher.models import Action, Failure, Job, JobParam, JobStatus, Reply

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DlfClient", "endpoint_for_region", "job_body", "path_segment"]

CONTENT_TYPE = "application/json;charset=UTF-8"
USER_AGENT = f"launcher/{__version__}"

# The body cache's bounds: this many bodies, of at most this many bytes each.
_MAX_BODIES = 256
_MAX_CACHED_BODY = 4096
# Connections of the pool for status checks and listings (beside the hot pool).
_QUERY_CONNECTIONS = 8
# Instance types (ListJobInstancesRequest.instance_type in the SDK: 0 normal scheduling,
# 2 manual, 5 backfill, 6 sub-job, 7 one-off) that a run-immediate cannot have made. The
# instance list is not filtered by type (which type the service gives run-immediate is
# not documented; a wrong guess would hide the run and cause a second one): instances of
# these types are ignored instead, every other one (2, 7, none given) counts.
_NOT_RUN_IMMEDIATE = frozenset({"0", "5", "6"})
# The service's Date header has whole seconds: allow for that when using it.
_DATE_RESOLUTION = 1.0


def endpoint_for_region(region: str) -> str:
    """The DLF endpoint of a region id, from the SDK's table (see `launcher.dlf.regions`)."""
    return dlf_endpoint(region)


class DlfClient:
    """DLF job calls over a pool of keep-alive connections (`HttpPool`) as large as the
    concurrency, plus a small pool for status checks and listings.

    Use as an async context manager. `auth_factory` gets a maker of the IAM
    login's aiohttp session: made on first use, with its own small pool (the
    login goes to another host), never on the job calls' path.
    """

    def __init__(
        self,
        endpoint: str,
        auth_factory: Callable[[Callable[[], aiohttp.ClientSession]], Auth],
        *,
        concurrency: int,
        timeout: float,
        ca_bundle: str | None = None,
        proxies: ProxySettings | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--endpoint: expected an http(s) URL, got {endpoint!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"--endpoint: invalid port in {endpoint!r}") from None
        self._scheme = parts.scheme
        self._host = parts.netloc  # the Host header: what the signature covers
        self._hostname = parts.hostname
        self._port = port
        self._base = parts.path.rstrip("/")
        self._auth_factory = auth_factory
        self._concurrency = concurrency
        self._timeout = timeout
        self._ca_bundle = ca_bundle
        self._proxies = proxies if proxies is not None else ProxySettings()
        self._proxy = self._proxies.for_url(endpoint)
        self._session: aiohttp.ClientSession | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._pool: HttpPool | None = None
        self._query_pool: HttpPool | None = None
        self._auth: Auth | None = None
        # AK/SK signing never waits: the hot path signs without a coroutine.
        self._signer: Signer | None = None
        self._routes: dict[tuple[str, str | None, str | None], _Route] = {}
        # Encoded bodies by parameter set: the jobs of a bulk run mostly share a few.
        self._bodies: dict[tuple[JobParam, ...], bytes] = {}

    @property
    def auth(self) -> Auth:
        """The authentication in use (available inside the context)."""
        if self._auth is None:
            raise RuntimeError("DlfClient used outside its context")
        return self._auth

    @property
    def proxy(self) -> str | None:
        """The proxy requests go through, for messages (credentials masked); None: direct."""
        return None if self._proxy is None else self._proxy.describe()

    async def __aenter__(self) -> DlfClient:
        # A plain-HTTP endpoint (the simulator, a test server) needs no trust store
        # until an IAM login: loading the system's costs ~80 ms of start-up, so it
        # waits. A --ca-bundle given is read now, so a bad one fails before sending.
        verifying = None
        if self._scheme == "https" or self._ca_bundle is not None:
            verifying = self._verifying_context()
        ssl_context = verifying if self._scheme == "https" else None
        self._pool = HttpPool(
            self._hostname,
            self._port,
            ssl_context=ssl_context,
            limit=self._concurrency,
            timeout=self._timeout,
            keep_headers=_ANSWER_HEADERS,
            proxy=self._proxy,
        )
        self._query_pool = HttpPool(
            self._hostname,
            self._port,
            ssl_context=ssl_context,
            limit=min(self._concurrency, _QUERY_CONNECTIONS),
            timeout=self._timeout,
            keep_headers=(*_ANSWER_HEADERS, "date"),
            proxy=self._proxy,
        )
        self._ssl_context = verifying
        self._auth = self._auth_factory(self._iam_session)
        if isinstance(self._auth, IamPasswordAuth):
            # The login goes through the proxy its own URL calls for (NO_PROXY applies).
            self._auth.proxy = self._proxies.for_url(self._auth.url)
        self._signer = self._auth.signer if isinstance(self._auth, AkSkAuth) else None
        self._routes.clear()  # they hold the previous auth's signing material
        return self

    def _verifying_context(self) -> ssl.SSLContext:
        """A context that verifies certificates (always on): --ca-bundle REPLACES the
        system trust store, as curl's --cacert and the SDK's ssl_ca_cert do."""
        try:
            return ssl.create_default_context(cafile=self._ca_bundle)
        except (OSError, ssl.SSLError) as error:
            raise UsageError(
                f"--ca-bundle {self._ca_bundle}: cannot be read as PEM: {error}"
            ) from None

    def write_ahead(self, before_write: Callable[[], None]) -> None:
        """Call `before_write` before any request leaves (see `HttpPool.write_ahead`)."""
        if self._pool is None:
            raise RuntimeError("DlfClient used outside its context")
        self._pool.write_ahead(before_write)

    def _iam_session(self) -> aiohttp.ClientSession:
        """The IAM login's session (a few requests a day; any host, so its own pool),
        made on first use: importing aiohttp costs ~0.2 s that AK/SK runs never need.

        It always verifies certificates, whatever the DLF endpoint's scheme: the
        password must never go to a server that did not prove who it is."""
        if self._session is None:
            import aiohttp

            context = self._ssl_context or self._verifying_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4, ssl=context),
                timeout=aiohttp.ClientTimeout(total=max(self._timeout, 30.0)),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._query_pool is not None:
            await self._query_pool.aclose()
            self._query_pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(self) -> None:
        """Obtain credentials now (an IAM login, if that is the method); raises AuthFailed."""
        await self.auth.apply("GET", self._host, "/", (), {}, b"")

    async def refresh_auth(self) -> bool:
        """Renew the credentials after the service said so; True when a retry may succeed."""
        return await self.auth.refresh()

    async def call(self, job: Job, action: Action) -> Reply:
        """Send `action` (start, stop, run-immediate) for `job`; never raises for HTTP trouble."""
        route = self._routes.get(("POST", job.project_id, job.workspace))
        if route is None:
            route = self._route("POST", job)
        path = f"{route.prefix}/jobs/{path_segment(job.name)}/{action}"
        body = self._bodies.get(job.params) if action != "stop" else b""
        if body is None:
            body = job_body(job)
            if len(body) <= _MAX_CACHED_BODY:
                if len(self._bodies) >= _MAX_BODIES:
                    self._bodies.clear()  # parameters unique per job: it never hits anyway
                self._bodies[job.params] = body
        # (stop: no body at all, as the SDK's StopJobRequest has none)
        reply, payload, _ = await self._request(route, path, (), body, self._pool)
        if action == "run-immediate" and payload is not None and reply.status == 200:
            # The SDK's RunOnceResponse says int; a string id is kept as the service gave it.
            instance_id = payload.get("instanceId")
            if (isinstance(instance_id, int) and not isinstance(instance_id, bool)) or (
                isinstance(instance_id, str) and instance_id
            ):
                return _with_instance(reply, instance_id)
        return reply

    async def query(
        self,
        project_id: str | None,
        workspace: str | None,
        path: str,
        params: Sequence[tuple[str, str]],
    ) -> QueryAnswer:
        """One signed GET of `/v1/{project_id}{path}` with `params` (for `launcher.dlf.listing`)."""
        route = self._route("GET", Job("", "", (), workspace, project_id))
        reply, payload, headers = await self._request(
            route, route.prefix + path, params, b"", self._query_pool
        )
        return QueryAnswer(reply, payload, service_clock(headers.get("date")))

    async def job_status(self, job: Job) -> JobStatus:
        """The job list's state of `job`: every page of the name's matches, exact name, any
        job type."""
        found = await listing.find_job(self, job.project_id, job.workspace, job.name)
        if found.entry is None:
            return JobStatus(found.reply, None, False)
        return JobStatus(found.reply, found.entry.status, True)

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        """Instances a run-immediate of `job` may have made, planned at or after
        `min_plan_time_ms` (epoch ms, our clock): every page, `preciseQuery=true`.

        The window is moved back by how far the service's clock (its `Date` header) is
        behind ours, so a service running late cannot hide a run that happened. The
        reply is the last page's (status 200 only when every page was read).
        """
        since = min_plan_time_ms
        for _ in range(2):
            reply, found, service_now = await self._instances_since(job, since)
            if reply.status != 200 or service_now is None:
                return reply, found
            behind = time.time() - service_now - _DATE_RESOLUTION  # s the service is late
            corrected = min_plan_time_ms - int(max(0.0, behind) * 1000)
            if corrected >= since:
                return reply, found
            since = corrected  # the service is late: search its own window again
        return reply, found

    async def _instances_since(
        self, job: Job, since_ms: int
    ) -> tuple[Reply, list[dict[str, Any]], float | None]:
        found: list[dict[str, Any]] = []
        reply = Reply(None, 0.0)
        service_now: float | None = None
        pages = listing.instances(
            self, job.project_id, job.workspace, name=job.name, min_plan_ms=since_ms
        )
        try:
            async with aclosing(pages):
                async for answer, entries in pages:
                    reply = answer.reply
                    if service_now is None:
                        service_now = answer.service_time
                    found += [
                        entry
                        for entry in entries
                        if str(entry.get("instanceType", "")) not in _NOT_RUN_IMMEDIATE
                    ]
        except listing.ListingFailed as failed:
            return failed.reply, [], None
        return reply, found, service_now

    def _route(self, method: str, job: Job) -> _Route:
        """The route of `method` requests for `job`'s project and workspace (cached)."""
        key = (method, job.project_id, job.workspace)
        route = self._routes.get(key)
        if route is None:
            route = _make_route(method, self._base, self._host, job, self._signer)
            if len(self._routes) >= 256:
                self._routes.clear()  # bounded: a run names a handful of projects and workspaces
            self._routes[key] = route
        return route

    async def _request(
        self,
        route: _Route,
        path: str,
        query: Sequence[tuple[str, str]],
        body: bytes,
        pool: HttpPool | None,
    ) -> tuple[Reply, dict[str, Any] | None, dict[str, str]]:
        auth = self._auth
        if pool is None or auth is None:
            raise RuntimeError("DlfClient used outside its context")
        # The canonical (sorted, encoded) query is what was signed; sending exactly
        # it makes the bytes on the wire the official SDK's too.
        target = path + "?" + canonical_query(query) if query else path
        method = route.method
        signing = route.signing
        if signing is not None and self._signer is not None:
            date, authorization = self._signer.signature(signing, path, query, body)
            head = (
                f"{method} {target}{route.to_date}{date}{route.to_signature}{authorization}"
                f"\r\n{_FIXED_HEADERS}{_content_length(method, body)}"
            ).encode()
        else:
            headers = dict(route.headers)
            await auth.apply(method, self._host, path, query, headers, body)
            head = _request_head(method, target, headers, body)
        started = time.perf_counter()
        try:
            answer = await pool.request(head, body)
        except NotSent as error:
            failure = Failure.TLS if error.tls else Failure.CONNECT
            latency = time.perf_counter() - started
            return Reply(None, latency, failure=failure, detail=str(error)), None, _NO_HEADERS
        except Lost as lost:
            failure = Failure.TIMEOUT if lost.timeout else Failure.DISCONNECT
            latency = time.perf_counter() - started
            return Reply(None, latency, failure=failure, detail=str(lost)), None, _NO_HEADERS
        latency = time.perf_counter() - started
        headers = answer.headers
        reply, payload = reply_from_answer(answer.status, headers, answer.body, latency)
        return reply, payload, headers


@dataclass(frozen=True, slots=True)
class _Route:
    """What every request of one method to one project and workspace shares.

    `headers` are the request's headers before authentication. With AK/SK
    signing, `signing` is their prepared form and the request head is
    ``{method} {target}{to_date}{date}{to_signature}{signature}`` plus the
    fixed headers and the length: one format per request instead of a dict
    signed in place and joined line by line.
    """

    method: str
    prefix: str  # "{base}/v1/{project}"
    # These may hold the security token: kept out of the repr.
    headers: dict[str, str] = field(repr=False)
    signing: Prepared | None = field(repr=False)
    to_date: str = field(repr=False)
    to_signature: str = field(repr=False)


def _make_route(method: str, base: str, host: str, job: Job, signer: Signer | None) -> _Route:
    """The route of `method` requests for `job`'s project and workspace, signed by `signer`."""
    headers = {"Host": host}
    if method == "POST":
        headers["Content-Type"] = CONTENT_TYPE
    if job.project_id:
        headers["X-Project-Id"] = job.project_id
    if job.workspace:
        headers["workspace"] = job.workspace
    prefix = f"{base}/v1/{path_segment(job.project_id or '')}"
    signing = signer.prepare(method, host, headers) if signer is not None else None
    if signing is None:
        return _Route(method, prefix, headers, None, "", "")
    # The headers as signing leaves them, in the same order: the caller's, then what
    # signing adds (None: the X-Sdk-Date), then Authorization, which ends the segments.
    signed: dict[str, str | None] = {**headers, **dict(signing.additions)}
    segments = [" HTTP/1.1\r\n"]
    for name, value in signed.items():
        if value is None:
            segments[-1] += f"{name}: "
            segments.append("\r\n")
        else:
            segments[-1] += f"{name}: {value}\r\n"
    segments[-1] += "Authorization: "
    to_date, to_signature = segments
    return _Route(method, prefix, headers, signing, to_date, to_signature)


def _request_head(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request line and headers as one buffer, ending with the blank line.

    Header values go out as UTF-8 bytes, as the official SDK sends them.
    """
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    lines.append(_FIXED_HEADERS)
    lines.append(_content_length(method, body))
    return "".join(lines).encode()


def _content_length(method: str, body: bytes) -> str:
    """The end of a request head: the body's length (always for a POST), the blank line."""
    return f"Content-Length: {len(body)}\r\n\r\n" if body or method == "POST" else "\r\n"


_FIXED_HEADERS = f"User-Agent: {USER_AGENT}\r\nAccept: application/json\r\n"


def job_body(job: Job) -> bytes:
    """The request body: `{"jobParams": [...]}` as the service expects it."""
    params = []
    for param in job.params:
        entry = {"name": param.name, "value": param.value}
        if param.param_type is not None:
            entry["paramType"] = param.param_type
        params.append(entry)
    return orjson.dumps({"jobParams": params})


def _with_instance(reply: Reply, instance_id: int | str) -> Reply:
    return Reply(
        reply.status,
        reply.latency,
        request_id=reply.request_id,
        instance_id=instance_id,
    )


# The answer headers `reply_from_answer` reads; the pool skips the others.
_ANSWER_HEADERS = ("x-request-id", "retry-after")
_NO_HEADERS: dict[str, str] = {}
