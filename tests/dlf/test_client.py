"""The client's request building: path segments and the request head, as bytes on the wire."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.dlf.answers import reply_from_answer as _reply_from_answer
from launcher.dlf.auth import AkSkAuth
from launcher.dlf.client import DlfClient, _request_head, job_body, path_segment
from launcher.dlf.signing import AkSk, Signer, canonical_query
from launcher.dlf.transport import Answer
from launcher.models import Job, JobParam, Reply


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


class _KeepHeads:
    """A pool stand-in: keeps every request it is given, answers 204."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def request(self, head: bytes, body: bytes) -> Answer:
        self.sent.append(head + body)
        return Answer(204, {}, b"")

    async def aclose(self) -> None:
        pass


_JOBS = [
    Job("1", "daily-01", (JobParam("bizdate", "2026-11-28"),), None, "p1"),
    Job("2", "a b/c", (JobParam("x", "y", "variable"),), "ws é", "p1"),
    Job("3", "..", (), "ws2", None),
]


@pytest.mark.anyio
@pytest.mark.parametrize("token", [None, "t0ken"])
async def test_signed_requests_are_the_bytes_of_a_signed_headers_dict(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    """The per-route head template sends what signing a fresh headers dict and rendering it
    with `_request_head` would: same headers, same order, same signature."""
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.25)
    host = "dlf.example:8080"
    signer = Signer(AkSk("AKID", "s3cr3t", token))
    pool = _KeepHeads()
    async with DlfClient(
        f"http://{host}/base", lambda _: AkSkAuth(signer), concurrency=1, timeout=5.0
    ) as client:
        client._pool = pool  # type: ignore[assignment]
        client._query_pool = pool  # type: ignore[assignment]
        for job in _JOBS * 2:
            await client.call(job, "start")
            await client.job_status(job)

    expected = []
    reference = Signer(AkSk("AKID", "s3cr3t", token))
    for job in _JOBS * 2:
        project = f"/base/v1/{path_segment(job.project_id or '')}"
        start = f"{project}/jobs/{path_segment(job.name)}/start"
        # Any job type, page 0 of 100 (the 204 stand-in's answer ends the listing there).
        query = [("jobName", job.name), ("limit", "100"), ("offset", "0")]
        for method, path, params, body in [
            ("POST", start, [], job_body(job)),
            ("GET", f"{project}/jobs", query, b""),
        ]:
            headers = {"Host": host}
            if method == "POST":
                headers["Content-Type"] = "application/json;charset=UTF-8"
            if job.project_id:
                headers["X-Project-Id"] = job.project_id
            if job.workspace:
                headers["workspace"] = job.workspace
            reference.sign(method, host, path, params, headers, body)
            target = f"{path}?{canonical_query(params)}" if params else path
            expected.append(_request_head(method, target, headers, body) + body)
    assert pool.sent == expected


@given(
    status=st.sampled_from([200, 204, 429, 503]),
    request_id=st.none() | st.text(max_size=8),
    retry_after=st.none() | st.sampled_from(["0", "2", "1.5"]),
    latency=st.floats(0.0, 10.0),
)
def test_an_empty_answer_makes_the_reply_the_keyword_constructor_makes(
    status: int, request_id: str | None, retry_after: str | None, latency: float
) -> None:
    headers = {"x-request-id": request_id} if request_id is not None else {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    reply, payload = _reply_from_answer(status, headers, b"", latency)
    expected_wait = float(retry_after) if retry_after is not None and status in (429, 503) else None
    assert payload is None
    assert reply == Reply(status, latency, request_id=request_id, retry_after=expected_wait)
    assert type(reply) is Reply
    assert reply.request_id == request_id  # (fields in their places, not just equal tuples)
    assert reply.retry_after == expected_wait
