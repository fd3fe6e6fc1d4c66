"""Which proxy a URL goes through: the environment as curl reads it, and --proxy."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.dlf.proxy import ProxySettings, bypassed, parse_proxy
from launcher.errors import UsageError

HTTPS = "https://dayu-dlf.cn-north-4.myhuaweicloud.com"
HTTP = "http://dlf.internal:8080"


def test_parse_proxy_with_credentials_never_shows_them() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.corp:8080")
    assert (proxy.host, proxy.port) == ("proxy.corp", 8080)
    assert proxy.username == "us@er"
    assert proxy.password == "p:ss"
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert proxy.url == "http://proxy.corp:8080"
    assert "p:ss" not in repr(proxy)
    assert "p%3Ass" not in repr(proxy)
    assert proxy.describe() == "http://***@proxy.corp:8080"


def test_parse_proxy_defaults() -> None:
    assert parse_proxy("proxy.corp:3129").url == "http://proxy.corp:3129"
    assert parse_proxy("http://proxy.corp").port == 3128
    assert parse_proxy("http://[::1]:8080").url == "http://[::1]:8080"


@pytest.mark.parametrize("bad", ["https://proxy:443", "socks5://p:1080", "http://", "http://h:x"])
def test_bad_proxy_urls_are_usage_errors_without_secrets(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_proxy(bad.replace("//", "//user:SECRET@", 1) if "@" not in bad else bad)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, HTTPS, None),
        ({"HTTPS_PROXY": "http://up:1"}, HTTPS, "up"),
        ({"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"}, HTTPS, "low"),
        ({"HTTPS_PROXY": "http://up:1"}, HTTP, None),  # http URLs use HTTP_PROXY only
        ({"HTTP_PROXY": "http://h:1"}, HTTP, "h"),
        ({"http_proxy": "http://h:1"}, HTTP, "h"),
        ({"HTTP_PROXY": "http://h:1"}, HTTPS, None),
        ({"HTTPS_PROXY": "http://up:1", "NO_PROXY": "myhuaweicloud.com"}, HTTPS, None),
        ({"HTTPS_PROXY": "http://up:1", "no_proxy": ".myhuaweicloud.com"}, HTTPS, None),
        ({"HTTPS_PROXY": "http://up:1", "NO_PROXY": "huaweicloud.com"}, HTTPS, "up"),
        ({"HTTPS_PROXY": "http://up:1", "NO_PROXY": "*"}, HTTPS, None),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "dlf.internal:8080"}, HTTP, None),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "dlf.internal:9090"}, HTTP, "h"),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": " , dlf.internal "}, HTTP, None),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "10.0.0.0/8"}, "http://10.1.2.3", None),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "10.0.0.0/8"}, "http://11.1.2.3", "h"),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "[::1]"}, "http://[::1]:8080", None),
        ({"HTTP_PROXY": "http://h:1", "NO_PROXY": "localhost"}, "http://127.0.0.1", "h"),
    ],
)
def test_environment(env: dict[str, str], url: str, expected: str | None) -> None:
    proxy = ProxySettings.resolve(None, env).for_url(url)
    assert (proxy.host if proxy else None) == expected


def test_explicit_proxy_wins_and_ignores_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    settings = ProxySettings.resolve("http://flag:2", env)
    for url in (HTTPS, HTTP):
        proxy = settings.for_url(url)
        assert proxy is not None
        assert proxy.host == "flag"
    assert ProxySettings.resolve("", env).for_url(HTTPS) is None  # --proxy '' turns it off


def test_a_bad_environment_proxy_names_the_variable() -> None:
    with pytest.raises(UsageError, match="https_proxy"):
        ProxySettings.resolve(None, {"https_proxy": "socks5://x:1"})


@given(host=st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True))
def test_a_name_covers_itself_and_its_subdomains_only(host: str) -> None:
    assert bypassed(host, 443, (host,))
    assert bypassed(f"a.{host}", 443, (host,))
    assert bypassed(f"a.{host}", 443, (f".{host}",))
    assert not bypassed(f"a{host}", 443, (host,))
