"""The client's request building: path segments and the request head, as bytes on the wire."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from launcher.client import _request_head, path_segment


def _reference_segment(value: str) -> str:
    # The rule path_segment implements, without its shortcut for plain values.
    encoded = quote(value, safe="~")
    return encoded.replace(".", "%2E") if encoded.strip(".") == "" else encoded


_plain = st.text(alphabet="abcXYZ019._~-", max_size=12)


@given(value=st.one_of(st.text(max_size=12), _plain, st.sampled_from(["", ".", "..", "a.b"])))
def test_path_segment_equals_quote_with_dot_segments_escaped(value: str) -> None:
    assert path_segment(value) == _reference_segment(value)


def test_path_segment_examples() -> None:
    assert path_segment("daily_load-01.v2~x") == "daily_load-01.v2~x"
    assert path_segment("a/b c") == "a%2Fb%20c"
    assert path_segment("..") == "%2E%2E"
    assert path_segment("作业") == "%E4%BD%9C%E4%B8%9A"
    assert path_segment("") == ""


def test_request_head_bytes() -> None:
    headers = {"Host": "h:1", "X-Sdk-Date": "20261129T000000Z", "workspace": "ws é"}
    post = _request_head("POST", "/v1/p/jobs/j/start", headers, b"{}")
    assert post.startswith(b"POST /v1/p/jobs/j/start HTTP/1.1\r\nHost: h:1\r\n")
    assert b"workspace: ws \xc3\xa9\r\n" in post  # header values go out as UTF-8
    assert post.endswith(b"Content-Length: 2\r\n\r\n")
    empty_post = _request_head("POST", "/x", {"Host": "h"}, b"")
    assert empty_post.endswith(b"Accept: application/json\r\nContent-Length: 0\r\n\r\n")
    get = _request_head("GET", "/v1/p/jobs?limit=100", {"Host": "h"}, b"")
    assert get.endswith(b"Accept: application/json\r\n\r\n")
    assert b"Content-Length" not in get
