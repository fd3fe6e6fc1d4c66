"""A raw TCP listener that logs every byte it receives: proof that nothing was sent.

It answers nothing (a client that does send waits, then times out): tests that
use it expect no connection at all, and assert on `connections` and `received`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class RawListener:
    """What the listener saw: how many connections, and every byte, in order."""

    port: int
    connections: int = 0
    chunks: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)


@contextmanager
def raw_listener() -> Iterator[RawListener]:
    """Listen on 127.0.0.1 (any free port) in a thread; log every connection's bytes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    seen = RawListener(server.getsockname()[1])
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with seen.lock:
                    seen.chunks.append(data)

    def accept() -> None:
        threads = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with seen.lock:
                seen.connections += 1
            thread = threading.Thread(target=serve_one, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield seen
    finally:
        stop.set()
        acceptor.join()
        server.close()
