"""The one place that talks to DLF: job calls turned into `Reply` values.

`DlfClient.call(job, action)` turns a job into a signed request and the answer
into a `Reply`; every other module sees only `Reply` values, never HTTP.
Requests go through `launcher.dlf.transport.HttpPool` (lean keep-alive HTTP/1.1:
the per-request hot path); an aiohttp session serves the rare IAM login.
Transport failures become data too: a failure before any byte was written is
`Failure.CONNECT` (safe to resend), anything later is ambiguous.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson

from launcher import __version__
from launcher.dlf.auth import AkSkAuth, Auth
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
# Reply((status, latency, error_code, error_msg, request_id, failure, retry_after,
# instance_id)), all fields in order, without NamedTuple's Python-level __new__.
_new_reply = partial(tuple.__new__, Reply)
# What quote(safe="~") leaves alone: ASCII letters, digits and "_.-~".
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")


def endpoint_for_region(region: str) -> str:
    """The DLF endpoint of a region id (`cn-north-4`, `eu-west-101`, ...)."""
    if not region or any(c.isspace() or c == "/" for c in region):
        raise UsageError(f"--region: invalid region id {region!r}")
    suffix = "myhuaweicloud.eu" if region.startswith("eu-") else "myhuaweicloud.com"
    return f"https://dayu-dlf.{region}.{suffix}"


def path_segment(value: str) -> str:
    """Percent-encode `value` as exactly one path segment.

    `/`, `?`, `#`, spaces and non-ASCII are escaped; a segment made only of
    dots (`.`, `..`) is escaped too, because proxies and servers would
    otherwise collapse it as a relative path and start a different job.
    """
    if _PLAIN_SEGMENT.fullmatch(value) and value.strip("."):
        return value  # nothing to escape: quote() would return it unchanged
    encoded = quote(value, safe="~")
    if encoded.strip(".") == "":
        encoded = encoded.replace(".", "%2E")
    return encoded


class DlfClient:
    """DLF job calls over one aiohttp session whose pool matches the concurrency.

    Use as an async context manager. `auth_factory` gets the session, so that
    an IAM password login can reuse the same pool.
    """

    def __init__(
        self,
        endpoint: str,
        auth_factory: Callable[[Callable[[], aiohttp.ClientSession]], Auth],
        *,
        concurrency: int,
        timeout: float,
        ca_bundle: str | None = None,
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
        self._session: aiohttp.ClientSession | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._pool: HttpPool | None = None
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

    async def __aenter__(self) -> DlfClient:
        ssl_context: ssl.SSLContext | None = None
        if self._scheme == "https":
            # Verification is always on; --ca-bundle only adds trust for private CAs.
            ssl_context = ssl.create_default_context(cafile=self._ca_bundle)
        self._pool = HttpPool(
            self._hostname,
            self._port,
            ssl_context=ssl_context,
            limit=self._concurrency + 4,  # + room for status checks beside the starts
            timeout=self._timeout,
            keep_headers=_ANSWER_HEADERS,
        )
        self._ssl_context = ssl_context
        self._auth = self._auth_factory(self._iam_session)
        self._signer = self._auth.signer if isinstance(self._auth, AkSkAuth) else None
        self._routes.clear()  # they hold the previous auth's signing material
        return self

    def write_ahead(self, before_write: Callable[[], None]) -> None:
        """Call `before_write` before any request leaves (see `HttpPool.write_ahead`)."""
        if self._pool is None:
            raise RuntimeError("DlfClient used outside its context")
        self._pool.write_ahead(before_write)

    def _iam_session(self) -> aiohttp.ClientSession:
        """The IAM login's session (a few requests a day; any host, so its own pool),
        made on first use: importing aiohttp costs ~0.2 s that AK/SK runs never need."""
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4, ssl=self._ssl_context or False),
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
        body = self._bodies.get(job.params)
        if body is None:
            body = job_body(job)
            if len(body) <= _MAX_CACHED_BODY:
                if len(self._bodies) >= _MAX_BODIES:
                    self._bodies.clear()  # parameters unique per job: it never hits anyway
                self._bodies[job.params] = body
        reply, payload = await self._request(route, path, (), body)
        if action == "run-immediate" and payload is not None and reply.status == 200:
            instance_id = payload.get("instanceId")
            if isinstance(instance_id, int):
                return _with_instance(reply, instance_id)
        return reply

    async def job_status(self, job: Job) -> JobStatus:
        """Ask the job list (filtered by name, same workspace) what state `job` is in."""
        route = self._route("GET", job)
        query = (("jobName", job.name), ("jobType", "BATCH"), ("limit", "100"))
        reply, payload = await self._request(route, f"{route.prefix}/jobs", query, b"")
        if payload is None or reply.status != 200:
            return JobStatus(reply, None, False)
        for entry in payload.get("jobs") or ():
            if isinstance(entry, dict) and entry.get("name") == job.name:
                status = entry.get("status")
                return JobStatus(reply, status if isinstance(status, str) else None, True)
        return JobStatus(reply, None, False)

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        """Instances of `job` planned at or after `min_plan_time_ms` (epoch milliseconds)."""
        route = self._route("GET", job)
        path = f"{route.prefix}/jobs/instances/detail"
        query = (("jobName", job.name), ("minPlanTime", str(min_plan_time_ms)), ("limit", "100"))
        reply, payload = await self._request(route, path, query, b"")
        found: list[dict[str, Any]] = []
        if payload is not None and reply.status == 200:
            found = [
                entry
                for entry in payload.get("instances") or ()
                if isinstance(entry, dict) and entry.get("jobName") == job.name
            ]
        return reply, found

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
    ) -> tuple[Reply, dict[str, Any] | None]:
        pool = self._pool
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
        except NotSent:
            return Reply(None, time.perf_counter() - started, failure=Failure.CONNECT), None
        except Lost as lost:
            failure = Failure.TIMEOUT if lost.timeout else Failure.DISCONNECT
            return Reply(None, time.perf_counter() - started, failure=failure), None
        latency = time.perf_counter() - started
        return _reply_from_answer(answer.status, answer.headers, answer.body, latency)


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


def _with_instance(reply: Reply, instance_id: int) -> Reply:
    return Reply(
        reply.status,
        reply.latency,
        request_id=reply.request_id,
        instance_id=instance_id,
    )


# The answer headers `_reply_from_answer` reads; the pool skips the others.
_ANSWER_HEADERS = ("x-request-id", "retry-after")


def _reply_from_answer(
    status: int, headers: dict[str, str], raw: bytes, latency: float
) -> tuple[Reply, dict[str, Any] | None]:
    """A `Reply` (and the JSON payload, if any) from an answer; `headers` keys lower-cased."""
    request_id = headers.get("x-request-id")
    retry_after = _retry_after(headers.get("retry-after")) if status in (429, 503) else None
    if status == 204 or not raw:  # (the common answer: made without NamedTuple's __new__)
        return _new_reply((status, latency, None, None, request_id, None, retry_after, None)), None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return Reply(status, latency, request_id=request_id, retry_after=retry_after), None
    if status < 300:
        return Reply(status, latency, request_id=request_id), payload
    code = payload.get("error_code")
    message = payload.get("error_msg")
    body_request_id = payload.get("request_id")
    return (
        Reply(
            status,
            latency,
            error_code=code if isinstance(code, str) else None,
            error_msg=message if isinstance(message, str) else None,
            request_id=body_request_id if isinstance(body_request_id, str) else request_id,
            retry_after=retry_after,
        ),
        payload,
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
