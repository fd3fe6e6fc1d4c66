"""Real network pieces for tests: a forward proxy (Debian's tinyproxy, installed by
`make ensure-tinyproxy`) and a private CA with a server certificate (trustme)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TinyProxy:
    """A running tinyproxy: its URL (with credentials when it wants some) and its log."""

    port: int
    url: str
    log: Path

    def requests(self, word: str = "") -> list[str]:
        """The request lines the proxy logged (`CONNECT host:port HTTP/1.1`, `GET http://...`)
        containing `word`."""
        lines = self.log.read_text(errors="replace").splitlines()
        found = [line.split("): ", 1)[1] for line in lines if "Request (file descriptor" in line]
        return [line for line in found if word in line]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tinyproxy_binary() -> str:
    found = shutil.which("tinyproxy") or next(
        (p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy") if os.path.exists(p)), None
    )
    if found is None:
        raise RuntimeError("tinyproxy is not installed: run `make ensure-tinyproxy`")
    return found


@contextmanager
def tinyproxy(
    directory: Path, *, user: str | None = None, password: str | None = None
) -> Iterator[TinyProxy]:
    """Run tinyproxy on a free loopback port until the block ends (any CONNECT port allowed)."""
    port = _free_port()
    log = directory / f"tinyproxy-{port}.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        "MaxClients 256",
        "Allow 127.0.0.1",
        "LogLevel Connect",
    ]
    if os.geteuid() == 0:  # it will not keep root: let it drop to nobody
        lines += ["User nobody", "Group nogroup"]
    if user is not None:
        lines.append(f"BasicAuth {user} {password or ''}")
    config = directory / f"tinyproxy-{port}.conf"
    config.write_text("\n".join(lines) + "\n")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [tinyproxy_binary(), "-d", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tinyproxy did not start: {log.read_text()}") from None
                time.sleep(0.05)
        credentials = f"{user}:{password}@" if user is not None else ""
        yield TinyProxy(port, f"http://{credentials}127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a private CA and of a server certificate it issued."""

    ca: Path
    cert: Path
    key: Path


def tls_files(directory: Path, *hosts: str) -> TlsFiles:
    """A fresh private CA and a certificate for `hosts` (default 127.0.0.1 and localhost)."""
    ca = trustme.CA()
    issued = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    return files
