"""Which forward proxy a request goes through: `--proxy`, else the environment, as curl reads it.

`HTTPS_PROXY` serves https URLs and `HTTP_PROXY` http ones (the lower-case names win
over the upper-case ones, as in curl and Python's urllib); `NO_PROXY` lists the hosts
reached directly: comma-separated names (a name also covers its subdomains, with or
without a leading dot), IP addresses, `host:port`, or `*` for every host. An explicit
`--proxy URL` applies to every endpoint and ignores the environment, `NO_PROXY` included;
`--proxy ''` (empty) turns proxies off.

A proxy URL is `http://[user:password@]host[:port]` (port 3128 by default, as curl's
1080 is for SOCKS only; most HTTP proxies document 3128 or 8080: give the port). Its
credentials become a `Proxy-Authorization: Basic` header and are never shown:
`Proxy.describe()` and `repr` give the URL without them.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from launcher.errors import UsageError

__all__ = ["Proxy", "ProxySettings", "parse_proxy"]

_DEFAULT_PORT = 3128


@dataclass(frozen=True, slots=True)
class Proxy:
    """One forward proxy: where it listens and the Basic credentials it wants (if any)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic …": a secret
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """`http://host:port`, without credentials (for aiohttp, with `username`/`password`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        """The proxy for messages: its URL, credentials replaced by `***`."""
        return self.url.replace("http://", "http://***@", 1) if self.authorization else self.url


def parse_proxy(text: str, *, source: str = "--proxy") -> Proxy:
    """Parse a proxy URL (a bare `host:port` means http://host:port). UsageError if bad.

    Messages name `source` and never repeat credentials.
    """
    spec = text.strip()
    if "://" not in spec:
        spec = "http://" + spec
    try:
        parts = urlsplit(spec)
        port = parts.port
    except ValueError:
        raise UsageError(f"{source}: invalid proxy URL") from None
    if parts.scheme.lower() != "http":
        raise UsageError(
            f"{source}: only http:// proxies are supported (https targets go through "
            f"them in a CONNECT tunnel), got {parts.scheme}://"
        )
    if not parts.hostname:
        raise UsageError(f"{source}: a proxy URL needs a host")
    authorization = username = password = None
    if parts.username is not None:
        username = unquote(parts.username)
        password = unquote(parts.password or "")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    return Proxy(parts.hostname, port or _DEFAULT_PORT, authorization, username, password)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxies in force: per scheme, and the hosts that bypass them."""

    https: Proxy | None = None
    http: Proxy | None = None
    no_proxy: tuple[str, ...] = ()
    explicit: bool = False  # from --proxy: applies to every host, NO_PROXY ignored

    @classmethod
    def resolve(cls, override: str | None, env: Mapping[str, str]) -> ProxySettings:
        """From `--proxy` (None: not given; empty: no proxy) and else the environment."""
        if override is not None:
            if not override.strip():
                return cls()
            proxy = parse_proxy(override)
            return cls(proxy, proxy, (), explicit=True)

        def get(name: str) -> tuple[str, str] | None:
            for key in (name.lower(), name.upper()):
                value = env.get(key)
                if value:
                    return key, value
            return None

        found: dict[str, Proxy] = {}
        for scheme, name in (("https", "HTTPS_PROXY"), ("http", "HTTP_PROXY")):
            entry = get(name)
            if entry is not None:
                found[scheme] = parse_proxy(entry[1], source=entry[0])
        bypass = get("NO_PROXY")
        hosts = tuple(
            item.strip().lower()
            for item in (bypass[1] if bypass else "").split(",")
            if item.strip()
        )
        return cls(found.get("https"), found.get("http"), hosts)

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for `url`, or None to connect directly."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or self.explicit:
            return proxy
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            port = None
        return None if bypassed(host, port, self.no_proxy) else proxy


def bypassed(host: str, port: int | None, no_proxy: tuple[str, ...]) -> bool:
    """Whether `host` (lower case) matches a NO_PROXY entry, as curl matches them."""
    for entry in no_proxy:
        if entry == "*":
            return True
        name, entry_port = entry, None
        if entry.startswith("[") and "]" in entry:  # [::1] or [::1]:8080
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, _, entry_port = entry.partition(":")
        if entry_port is not None and entry_port != str(port):
            continue
        if "/" in name:  # a CIDR block, as requests and newer curl accept
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
