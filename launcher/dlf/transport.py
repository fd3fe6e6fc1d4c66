"""A lean HTTP/1.1 keep-alive client for the per-request hot path.

Why not aiohttp here: at thousands of starts a second its client machinery
(request and response objects, multidicts, cookie jar, tracing hooks, timers)
costs about 150 µs of CPU per request, more than everything else the launcher
does per job together. The launcher sends one kind of request to one host, so
this module does just that: a pool of keep-alive connections, each an asyncio
protocol with httptools' C parser, one request in flight per connection, the
request written as one buffer. aiohttp remains for the IAM login and the
simulator.

What the caller needs for retry safety is kept exact: `request` raises
`NotSent` when no byte of the request can have left (the connection could not
be made: refused, DNS, proxy, TLS, connect timeout), and `Lost` when the request
was written but no complete answer came back (reset, EOF, timeout): ambiguous.
`NotSent.tls` marks a certificate or host name that failed verification: no retry
can fix that. Both carry the reason as their message.

HTTP edges handled as the official SDK's `requests` handles them: interim `1xx`
answers (100 Continue) are skipped, and an answer without Content-Length or chunked
framing (HTTP/1.0, `Connection: close`) is complete when the server closes.

Through a forward proxy (`launcher.dlf.proxy`), an https origin is reached in a
CONNECT tunnel (TLS end to end, the proxy sees only the host name), an http one
with absolute-form request targets; `Proxy-Authorization` goes to the proxy only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple, cast

import anyio
import httptools

from launcher.dlf.proxy import Proxy
from launcher.models import from_fields

__all__ = ["Answer", "HttpPool", "Lost", "NotSent", "backend_options"]


def backend_options() -> dict[str, object]:
    """`anyio.run(..., backend_options=backend_options())`: uvloop's event loop when installed.

    libuv's loop runs the per-request work (socket writes and reads, timers, task
    steps) for less CPU than asyncio's selector loop; everything here (protocols,
    `call_at` timers, futures) works the same on both. Without uvloop (Windows, or
    not installed): `{}`, the standard loop.
    """
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


class NotSent(Exception):
    """Nothing was written: resending is safe. `timeout` says whether connecting timed out;
    `tls` that the certificate or host name failed verification (resending cannot help)."""

    def __init__(self, reason: str, *, timeout: bool = False, tls: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout
        self.tls = tls


class Lost(Exception):
    """The request was written but no complete answer was read: ambiguous."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


class Answer(NamedTuple):
    """A complete HTTP answer. Header names are lower-cased; only those the pool was told
    to keep are there.

    A named tuple rather than a frozen dataclass: one is made per request, and a
    tuple is built for a third of a frozen dataclass's cost.
    """

    status: int
    headers: dict[str, str]
    body: bytes


# An `Answer` is built as `from_fields(Answer, fields)` (see `launcher.models.from_fields`).
AnswerFields = tuple[int, dict[str, str], bytes]
# The headers that frame an answer's body; without either, it ends at the connection's end.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# The most a proxy's answer to CONNECT may take, headers included.
_MAX_CONNECT_ANSWER = 65536


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses answers with httptools as bytes arrive."""

    __slots__ = (
        "_body",
        "_framed",
        "_headers",
        "_headers_done",
        "_keep",
        "_parser",
        "_waiter",
        "_watch",
        "closed",
        "deadline",
        "reusable",
        "transport",
    )

    def __init__(self, keep: frozenset[bytes] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._keep = keep  # lower-case names of the headers to keep (None: all)
        # What on_header looks at: the kept names and the two that frame a body.
        self._watch = None if keep is None else keep | _FRAMING
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False  # the answer in progress has all its headers
        self._framed = False  # ... and a Content-Length or Transfer-Encoding among them
        self.closed = False
        self.reusable = True
        self.deadline = 0.0  # loop time by which the request in flight must be answered

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport has the interface of
        # asyncio.Transport without being a subclass (or a registered one) of it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(Lost(f"malformed answer: {error}"))
            self.close()

    def eof_received(self) -> bool:
        self._complete_at_eof()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._complete_at_eof()
        self._fail(Lost(f"connection closed: {exc}" if exc else "connection closed by peer"))

    def _complete_at_eof(self) -> None:
        """An answer without Content-Length or chunked framing ends where the connection
        does (RFC 9112 6.3): the server closing it completes the answer, not loses it."""
        waiter = self._waiter
        if waiter is None or waiter.done() or not self._headers_done or self._framed:
            return
        self.reusable = False
        fields: AnswerFields = (self._parser.get_status_code(), self._headers, b"".join(self._body))
        waiter.set_result(from_fields(Answer, fields))

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Header names are ASCII tokens (the parser rejects others): bytes.lower() is
        # str.lower() on them, and a header nobody reads is never decoded.
        lower = name.lower()
        if self._watch is None or lower in self._watch:
            if lower in _FRAMING:
                self._framed = True
                if self._keep is not None and lower not in self._keep:
                    return
            self._headers[lower.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # an answer nobody asked for: the connection is out of step
            return
        status = self._parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 102, 103): the real one follows.
            self._headers = {}
            self._body = []
            self._headers_done = self._framed = False
            return
        self.reusable = self._parser.should_keep_alive()
        fields: AnswerFields = (status, self._headers, b"".join(self._body))
        waiter.set_result(from_fields(Answer, fields))

    # -- use -------------------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        """Write one request; `waiter` gets its answer (or `Lost`)."""
        assert self.transport is not None
        self._waiter = waiter
        self._headers = {}
        self._body = []
        self._headers_done = self._framed = False
        self.transport.write(data)

    def expire(self, timeout: float) -> None:
        """The request in flight is out of time: its caller gets `Lost` (a timeout)."""
        self._fail(Lost(f"no answer within {timeout:g} s", timeout=True))

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        """Close at once (abort: no graceful shutdown for a connection out of step)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HttpPool:
    """Keep-alive connections to one origin, at most `limit` at a time.

    Per request the hot path takes a slot (a counter; a queue only when all are
    taken), an idle connection, one write and one future: no timer, no lock. The
    timeout is enforced by one sweep for the whole pool, every `timeout / 10`
    (at most 0.25 s): an answer is abandoned between `timeout` and `timeout` plus
    that interval after the request began. A timer handle per request cost
    ~3 µs to arm and cancel; the sweep costs nothing per request.

    `keep_headers` names the answer headers the caller reads (any case; None:
    all of them): the others are skipped without being decoded.

    A pool serves the event loop of its first request, as its connections do.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        timeout: float,
        keep_headers: Iterable[str] | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._proxy = proxy
        # Through a proxy, plain http requests name the origin in absolute form, and carry
        # the proxy's credentials (https ones are tunnelled: the proxy sees only CONNECT).
        self._absolute: bytes | None = None
        self._proxy_auth = b""
        # Through a plain-http proxy a connection serves one request: proxies such as
        # tinyproxy close it after each answer without saying so, and a request written
        # into that closing connection would be lost (ambiguous) instead of not sent.
        self._reuse = proxy is None or ssl_context is not None
        if proxy is not None and ssl_context is None:
            self._absolute = f"http://{_authority(host, port)}".encode()
            if proxy.authorization:
                self._proxy_auth = f"Proxy-Authorization: {proxy.authorization}\r\n".encode()
        self._timeout = timeout
        self._idle: deque[_Connection] = deque()
        # Slots: a plain counter, and a queue of futures only when every slot is
        # taken (asyncio's semaphore cost ~1.2 µs a request for a limit rarely reached).
        self._limit = limit
        self._in_use = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._busy: set[_Connection] = set()  # connections with a request in flight
        self._sweep_every = min(max(timeout / 10.0, 0.005), 0.25)
        self._sweeper: asyncio.TimerHandle | None = None
        # Found once: asyncio.get_running_loop() makes a getpid() system call (Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keep = (
            None
            if keep_headers is None
            else frozenset(name.lower().encode("latin-1") for name in keep_headers)
        )
        # With `write_ahead`: the hook, and the requests of this loop iteration waiting for it.
        self._before_write: Callable[[], None] | None = None
        self._outbox: list[tuple[_Connection, bytes, asyncio.Future[Answer]]] = []

    def write_ahead(self, before_write: Callable[[], None]) -> None:
        """Call `before_write` before any request's bytes leave, once for all the requests
        made in one loop iteration: their writes wait for the end of the iteration.

        For a write-ahead log whose records must reach the OS before the requests
        they describe do: one write of the log per iteration instead of one per
        request. If `before_write` raises, the requests waiting for it raise the
        same, and none of them is written.
        """
        self._before_write = before_write

    def _write_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        before_write = self._before_write
        assert before_write is not None  # only then are requests put in the outbox
        try:
            before_write()
        except Exception as error:
            for _, _, waiter in outbox:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        for connection, data, waiter in outbox:
            if waiter.done():
                continue  # its request was abandoned (cancelled) before it was written
            if connection.closed:  # by the peer, meanwhile: not a byte of it left
                waiter.set_exception(NotSent("the connection closed before the request left"))
                continue
            connection.send(data, waiter)

    async def request(self, head: bytes, body: bytes) -> Answer:
        """Send one request (`head` ends with the blank line) and return its answer.

        Raises `NotSent` or `Lost` (see the module docstring); never anything else
        for network trouble. The timeout covers connecting, sending and the answer.
        """
        if self._in_use < self._limit and not self._queue:
            self._in_use += 1
        else:
            await self._queue_for_slot()
        try:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            connection = self._idle_connection()
            if connection is None:
                with anyio.move_on_after(self._timeout):
                    connection = await self._connect()
                if connection is None:
                    raise NotSent(f"could not connect within {self._timeout:g} s", timeout=True)
            waiter: asyncio.Future[Answer] = loop.create_future()
            # The sweep fails the waiter past the deadline; the connection, whose
            # answer may still come, is then closed rather than reused.
            connection.deadline = deadline
            busy = self._busy
            busy.add(connection)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)
            if self._absolute is not None:
                head = self._absolute_form(head)
            data = head + body if body else head
            if self._before_write is None:
                connection.send(data, waiter)
            else:
                outbox = self._outbox
                outbox.append((connection, data, waiter))
                if len(outbox) == 1:
                    loop.call_soon(self._write_outbox)
            try:
                answer = await waiter
            except BaseException:
                connection.close()
                raise
            finally:
                busy.discard(connection)
            if connection.reusable and not connection.closed and self._reuse:
                self._idle.append(connection)
            else:
                connection.close()
            return answer
        finally:
            self._release()

    async def _queue_for_slot(self) -> None:
        """Wait for a slot; a releasing request hands its slot over (`_in_use` stays)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, but cancelled before using it: pass it on
            elif waiter in self._queue:
                self._queue.remove(waiter)
            raise

    def _release(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests past their deadline; run again while any is in flight."""
        self._sweeper = None
        busy = self._busy
        if not busy:
            return
        now = loop.time()
        for connection in [c for c in busy if c.deadline <= now]:
            connection.expire(self._timeout)
        self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def _idle_connection(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def _absolute_form(self, head: bytes) -> bytes:
        """`POST /path HTTP/1.1` as `POST http://host:port/path HTTP/1.1`, for a proxy."""
        assert self._absolute is not None
        method, _, rest = head.partition(b" ")
        if self._proxy_auth:
            rest = rest[:-2] + self._proxy_auth + b"\r\n"  # before the blank line
        return method + b" " + self._absolute + rest

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        proxy = self._proxy
        where = f"{self._host}:{self._port}"
        try:
            if proxy is None:
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._keep),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
            elif self._ssl is None:
                where = f"proxy {proxy.url}"
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._keep), proxy.host, proxy.port
                )
            else:
                sock = await _tunnel(loop, proxy, self._host, self._port)
                try:
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self._keep),
                        sock=sock,
                        ssl=self._ssl,
                        server_hostname=self._host,
                    )
                except BaseException:
                    sock.close()
                    raise
        except ssl.SSLCertVerificationError as error:
            raise NotSent(
                f"TLS certificate of {where} not trusted: {error.verify_message}", tls=True
            ) from None
        except ssl.SSLError as error:
            raise NotSent(f"TLS handshake with {where} failed: {error.reason}") from None
        except OSError as error:
            raise NotSent(f"cannot connect to {where}: {error.strerror or error}") from None
        return protocol

    async def aclose(self) -> None:
        """Close every idle connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _tunnel(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int
) -> socket.socket:
    """A socket to `proxy` on which a CONNECT to host:port succeeded (ready for TLS).

    Raises OSError (connect failures, a refused CONNECT) with a message naming the
    proxy, never its credentials.
    """
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as error:
                sock.close()
                last = error
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _connect_through(loop, sock, proxy, host, port)
        except BaseException:  # failed, refused or cancelled (the connect timeout)
            sock.close()
            raise
        return sock
    raise OSError(f"proxy {proxy.url} unreachable: {last.strerror if last else 'no address'}")


async def _connect_through(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy, host: str, port: int
) -> None:
    authority = _authority(host, port)
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise OSError(f"proxy {proxy.url} closed the connection during CONNECT")
        answer += chunk
        if len(answer) > _MAX_CONNECT_ANSWER:
            raise OSError(f"proxy {proxy.url} sent an oversized answer to CONNECT")
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    # Any 2xx means the tunnel is open (RFC 9110 9.3.6).
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
        raise OSError(f"proxy {proxy.url} refused CONNECT {authority}: {status_line[:120]}")
