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
be made: refused, DNS, TLS, connect timeout), and `Lost` when the request was
written but no complete answer came back (reset, EOF, timeout): ambiguous.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass

import anyio
import httptools

__all__ = ["Answer", "HttpPool", "Lost", "NotSent"]


class NotSent(Exception):
    """Nothing was written: resending is safe. `timeout` says whether connecting timed out."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


class Lost(Exception):
    """The request was written but no complete answer was read: ambiguous."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer. Header names are lower-cased."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses answers with httptools as bytes arrive."""

    __slots__ = (
        "_body",
        "_headers",
        "_parser",
        "_waiter",
        "closed",
        "reusable",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.closed = False
        self.reusable = True

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(Lost(f"malformed answer: {error}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(Lost(f"connection closed: {exc}" if exc else "connection closed by peer"))

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # an answer nobody asked for: the connection is out of step
            return
        self.reusable = self._parser.should_keep_alive()
        waiter.set_result(
            Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        )

    # -- use -------------------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        """Write one request; `waiter` gets its answer (or `Lost`)."""
        assert self.transport is not None
        self._waiter = waiter
        self._headers = {}
        self._body = []
        self.transport.write(data)

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        """Close at once (abort: no graceful shutdown for a connection out of step)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[Answer], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(Lost(f"no answer within {timeout:g} s", timeout=True))


class HttpPool:
    """Keep-alive connections to one origin, at most `limit` at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        timeout: float,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._timeout = timeout
        self._idle: deque[_Connection] = deque()
        # asyncio's semaphore: anyio's yields to the event loop on every acquire,
        # a loop iteration per request on the hot path for a limit rarely reached.
        self._slots = asyncio.Semaphore(limit)

    async def request(self, head: bytes, body: bytes) -> Answer:
        """Send one request (`head` ends with the blank line) and return its answer.

        Raises `NotSent` or `Lost` (see the module docstring); never anything else
        for network trouble. The timeout covers connecting, sending and the answer.
        """
        async with self._slots:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            connection = self._idle_connection()
            if connection is None:
                with anyio.move_on_after(self._timeout):
                    connection = await self._connect()
                if connection is None:
                    raise NotSent(f"could not connect within {self._timeout:g} s", timeout=True)
            waiter: asyncio.Future[Answer] = loop.create_future()
            # A timer, not a cancel scope: it is per request, and a timer handle is
            # a fraction of a scope's cost. It fails the waiter; the connection,
            # whose answer may still come, is then closed rather than reused.
            timer = loop.call_at(deadline, _expire, waiter, self._timeout)
            connection.send(head + body if body else head, waiter)
            try:
                answer = await waiter
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
            if connection.reusable and not connection.closed:
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def _idle_connection(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        except (OSError, ssl.SSLError) as error:
            raise NotSent(f"cannot connect to {self._host}:{self._port}: {error}") from None
        return protocol

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()
