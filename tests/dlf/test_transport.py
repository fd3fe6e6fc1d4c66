"""The lean HTTP client against real sockets: answers, keep-alive, and the exact line
between "nothing was sent" and "sent, answer lost" that retry safety depends on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web

from launcher.dlf.transport import HttpPool, Lost, NotSent, backend_options

pytestmark = pytest.mark.anyio

HEAD = b"POST /v1/p/jobs/a/start HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


@asynccontextmanager
async def server(handler: web.Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """An aiohttp server; yields its port and the list of peer ports seen (connections)."""
    peers: list[int] = []

    async def wrapped(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer and peer[1] not in peers:
            peers.append(peer[1])
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", wrapped)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, peers
    finally:
        await runner.cleanup()


async def test_answers_and_keep_alive_reuse() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if body == b"{}":
            return web.Response(status=204, headers={"X-Request-Id": "r1"})
        return web.json_response({"error_code": "DLF.0100"}, status=400)

    async with server(handler) as (port, peers):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=4, timeout=5)
        first = await pool.request(HEAD, b"{}")
        second = await pool.request(HEAD[:-5] + b"3\r\n\r\n", b"{ }")
        await pool.aclose()
    assert first.status == 204
    assert first.headers["x-request-id"] == "r1"
    assert second.status == 400
    assert b"DLF.0100" in second.body
    assert len(peers) == 1  # the second request reused the connection


async def test_only_the_headers_asked_for_are_kept() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"X-Request-Id": "r1", "Retry-After": "3", "X-Other": "x"}
        return web.Response(status=429, headers=headers)

    async with server(handler) as (port, _):
        pool = HttpPool(
            "127.0.0.1",
            port,
            ssl_context=None,
            limit=1,
            timeout=5,
            keep_headers=("x-request-id", "Retry-After"),
        )
        answer = await pool.request(HEAD, b"{}")
        await pool.aclose()
    assert answer.headers == {"x-request-id": "r1", "retry-after": "3"}


async def test_chunked_answers_are_read_whole() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"instance')
        await response.write(b'Id": 7}')
        await response.write_eof()
        return response

    async with server(handler) as (port, _):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)
        answer = await pool.request(HEAD, b"{}")
        await pool.aclose()
    assert answer.body == b'{"instanceId": 7}'


async def test_refused_connection_is_not_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)
    with pytest.raises(NotSent):
        await pool.request(HEAD, b"{}")


async def test_a_reset_after_the_request_is_lost_not_unsent() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=204)

    async with server(handler) as (port, _):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)
        with pytest.raises(Lost) as lost:
            await pool.request(HEAD, b"{}")
    assert not lost.value.timeout


async def test_a_slow_answer_is_a_timeout_and_the_connection_is_not_reused() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(1.0)
        return web.Response(status=204)

    async with server(handler) as (port, peers):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=2, timeout=0.2)
        with pytest.raises(Lost) as lost:
            await pool.request(HEAD, b"{}")
        assert lost.value.timeout
        answer = await pool.request(HEAD, b"{}")  # a fresh connection, not the late one
        await pool.aclose()
    assert answer.status == 204
    assert len(peers) == 2


async def test_concurrency_is_bounded_by_the_pool_limit() -> None:
    in_flight = peak = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.02)
        in_flight -= 1
        return web.Response(status=204)

    async with server(handler) as (port, peers):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=3, timeout=5)
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(pool.request, HEAD, b"{}")
        await pool.aclose()
    assert peak == 3
    assert len(peers) == 3


async def test_a_cancelled_queued_request_passes_its_slot_on() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await anyio.sleep(0.05)
        return web.Response(status=204)

    statuses: list[int] = []

    async with server(handler) as (port, _):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)

        async def send() -> None:
            statuses.append((await pool.request(HEAD, b"{}")).status)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)  # takes the only slot
                await anyio.sleep(0.01)
                with anyio.CancelScope() as doomed:
                    doomed.cancel()  # queued behind it, then cancelled while waiting
                    await pool.request(HEAD, b"{}")
                tg.start_soon(send)  # queued: must still get the slot
                tg.start_soon(send)
            await send()  # and the pool is free again afterwards
        await pool.aclose()
    assert statuses == [204, 204, 204, 204]


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_the_pool_works_on_uvloop(anyio_backend: object) -> None:
    # backend_options() picks uvloop whenever it is installed (not on Windows).
    assert backend_options() == {"use_uvloop": True}
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 3:
            await anyio.sleep(1.0)
        return web.Response(status=204, headers={"X-Request-Id": f"r{calls}"})

    async with server(handler) as (port, peers):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=2, timeout=0.2)
        first = await pool.request(HEAD, b"{}")
        second = await pool.request(HEAD, b"{}")
        with pytest.raises(Lost) as lost:
            await pool.request(HEAD, b"{}")  # the sweep times it out on uvloop's clock too
        assert lost.value.timeout
        fourth = await pool.request(HEAD, b"{}")
        await pool.aclose()
    assert [first.headers["x-request-id"], second.headers["x-request-id"]] == ["r1", "r2"]
    assert fourth.status == 204
    assert len(peers) == 2  # kept alive, then a fresh connection after the timeout


async def test_write_ahead_runs_once_per_iteration_before_any_request_leaves() -> None:
    events: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        events.append("request")
        return web.Response(status=204)

    async with server(handler) as (port, _):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=8, timeout=5)
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # five idle connections, so that nothing below waits to connect
                tg.start_soon(pool.request, HEAD, b"{}")
        events.clear()
        pool.write_ahead(lambda: events.append("log"))
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # started in one iteration: their writes wait for one hook
                tg.start_soon(pool.request, HEAD, b"{}")
        await pool.aclose()
    assert events == ["log"] + ["request"] * 5


async def test_a_failing_write_ahead_fails_its_requests_and_sends_nothing() -> None:
    requests: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(await request.read())
        return web.Response(status=204)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    async with server(handler) as (port, _):
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=2, timeout=5)
        await pool.request(HEAD, b"{}")  # a connection to reuse: nothing in the way but the hook
        pool.write_ahead(disk_full)
        with pytest.raises(OSError, match="No space"):
            await pool.request(HEAD, b"{}")
        await anyio.sleep(0.1)
        await pool.aclose()
    assert len(requests) == 1


@asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[int]:
    """A server that reads one request head, writes `answer` as is, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        # Delimited by the connection's end: complete answers, not lost ones.
        (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nbusy", 503, b"busy"),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n<html>bad</html>",
            502,
            b"<html>bad</html>",
        ),
        (b"HTTP/1.0 400 Bad Request\r\n\r\n", 400, b""),
        # Interim answers before the real one are skipped.
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r\r\n\r\n{}",
            200,
            b"{}",
        ),
    ],
)
async def test_answers_delimited_by_close_or_preceded_by_interim_ones(
    answer: bytes, status: int, body: bytes
) -> None:
    async with raw_server(answer) as port:
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)
        got = await pool.request(HEAD, b"{}")
        await pool.aclose()
    assert (got.status, got.body) == (status, body)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # shorter than it said
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",  # no last chunk
        b"HTTP/1.1 204 No Con",  # cut in the head
        b"HTTP/1.1 100 Continue\r\n\r\n",  # only the interim answer
        b"",
    ],
)
async def test_a_framed_answer_cut_short_is_still_lost(answer: bytes) -> None:
    async with raw_server(answer) as port:
        pool = HttpPool("127.0.0.1", port, ssl_context=None, limit=1, timeout=5)
        with pytest.raises(Lost):
            await pool.request(HEAD, b"{}")
        await pool.aclose()


def test_absolute_form_for_a_plain_http_proxy() -> None:
    from launcher.dlf.proxy import parse_proxy

    pool = HttpPool(
        "dlf.internal",
        8080,
        ssl_context=None,
        limit=1,
        timeout=5,
        proxy=parse_proxy("http://u:p@proxy:3128"),
    )
    head = pool._absolute_form(HEAD)
    assert head.startswith(b"POST http://dlf.internal:8080/v1/p/jobs/a/start HTTP/1.1\r\n")
    assert head.endswith(b"Content-Length: 2\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
