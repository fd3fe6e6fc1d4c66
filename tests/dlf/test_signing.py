"""Tests for launcher.dlf.signing: byte-for-byte equality with the official SDK signer (the
oracle, `huaweicloudsdkcore`), verify() round trips and tamper detection, and secrecy."""

from __future__ import annotations

import hashlib
import hmac
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.dlf.signing import (
    EMPTY_SHA256,
    AkSk,
    Signer,
    _hmac_pads,
    canonical_query,
    canonical_uri,
    format_sdk_date,
    verify,
)

with warnings.catch_warnings():
    # The SDK is only a test oracle: whatever it warns about at import is not our concern.
    warnings.simplefilter("ignore")
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer as SdkSigner

SK = "s3cr3t-SK-value"
TOKEN = "t0ken-SECURITY-value"
HOST = "dayu-dlf.cn-north-4.myhuaweicloud.com"
DATE = "20241030T081500Z"
DATE_DT = datetime(2024, 10, 30, 8, 15, tzinfo=UTC)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def _quiet() -> Iterator[None]:
    # The SDK may emit deprecation warnings (pytest turns warnings into errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# ---------------------------------------------------------------------------- strategies

# Any text UTF-8 can encode (lone surrogates cannot, for the SDK as for the wire).
_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=10)
_special_segments = st.sampled_from(
    ["..", ".", "", "~", "a b", "a/b", "?", "#", "作业", "é", "%", "%2F", "a%2Fb", "%7E", "%zz"]
)
# A wire path segment: raw as generated, or encoded the way the SDK encodes path params
# (quote with safe=""), or encoded with "~" kept, or one of the tricky literals above.
_segment = st.one_of(
    _text.map(lambda s: quote(s, safe="")),
    _text.map(lambda s: quote(s, safe="~")),
    _text,
    _special_segments,
    _special_segments.map(lambda s: quote(s, safe="")),
)
_paths = st.builds(
    lambda segments, slash: "/" + "/".join(segments) + slash,
    st.lists(_segment, max_size=6),
    st.sampled_from(["", "/"]),
)
_queries = st.lists(st.tuples(_text, _text), max_size=5)
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "post", "Get"])
_RESERVED = {"authorization", "x-sdk-date", "x-security-token", "x-sdk-content-sha256"}
_header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
_padding = st.sampled_from(["", " ", "  ", "\t", " \t "])
_header_values = st.builds(lambda a, v, b: a + v + b, _padding, _text, _padding)
_generated_headers = st.dictionaries(
    _header_names.filter(lambda n: n not in _RESERVED), _header_values, max_size=6
)
_content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json;charset=UTF-8",
        "application/bson",
        "text/plain",
        "application/octet-stream",
        " application/json",
        "",
    ]
)
_json_bodies = st.dictionaries(
    _text, st.one_of(_text, st.integers(-(2**53), 2**53), st.booleans())
).map(orjson.dumps)
_bodies = st.one_of(st.just(b""), _json_bodies, st.binary(max_size=64))
_aks = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=20)
_sks = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
_tokens = st.one_of(st.none(), st.just(""), _text.map(lambda t: "tok-" + t))
_dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))
_hosts = st.sampled_from([HOST, "127.0.0.1:8443", "dayu-dlf.eu-west-101.myhuaweicloud.eu"])


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    headers = dict(draw(_generated_headers))
    content_type = draw(_content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["X-Project-Id"] = "0123456789abcdef0123456789abcdef"
    if draw(st.booleans()) and "host" not in headers:
        headers["Host"] = "preset.example.com"
    headers["X-Sdk-Date"] = format_sdk_date(draw(_dates))
    return {
        "method": draw(_methods),
        "host": draw(_hosts),
        "path": draw(_paths),
        "query": draw(_queries),
        "headers": headers,
        "body": draw(_bodies),
    }


def _sdk_sign(
    creds: AkSk, method: str, host: str, path: str, query: Any, headers: Any, body: bytes
) -> SdkRequest:
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query),
        header_params=dict(headers),
        body=body,
    )
    sdk_creds = BasicCredentials(creds.ak, creds.sk)
    if creds.security_token is not None:
        sdk_creds.with_security_token(creds.security_token)
    with _quiet():
        # sign_request is where the SDK adds X-Security-Token before signing.
        sdk_creds.sign_request(request)
    return request


def _sdk_wire_headers(request: SdkRequest) -> dict[str, str]:
    # The SDK leaves UTF-8 bytes decoded as Latin-1 for `requests` to encode as Latin-1;
    # decode them back to compare with our str values (sent UTF-8 encoded by aiohttp).
    return {k: v.encode("latin-1").decode("utf-8") for k, v in request.header_params.items()}


# --------------------------------------------------------------- equality with the SDK


@FAST
@given(req=_requests(), ak=_aks, sk=_sks, token=_tokens)
def test_sign_equals_sdk(req: dict[str, Any], ak: str, sk: str, token: str | None) -> None:
    creds = AkSk(ak, sk, token)
    ours = dict(req["headers"])
    Signer(creds).sign(req["method"], req["host"], req["path"], req["query"], ours, req["body"])
    sdk = _sdk_sign(
        creds, req["method"], req["host"], req["path"], req["query"], req["headers"], req["body"]
    )
    assert ours == _sdk_wire_headers(sdk)
    # The SDK sends the canonical query string as the query: so must we.
    query = canonical_query(req["query"])
    assert sdk.uri == (req["path"] + "?" + query if query else req["path"])


@FAST
@given(
    req=_requests(),
    more=st.lists(st.tuples(_paths, _queries, _bodies), min_size=1, max_size=3),
    moment=_dates,
    ak=_aks,
    sk=_sks,
    token=_tokens,
)
def test_one_signer_many_requests_equals_sdk(
    req: dict[str, Any],
    more: list[tuple[str, list[tuple[str, str]], bytes]],
    moment: datetime,
    ak: str,
    sk: str,
    token: str | None,
) -> None:
    # The signer keeps what a (method, host, headers) set fixes and reuses it for the next
    # request with the same set: the first request and every later one equal the SDK's.
    creds = AkSk(ak, sk, token)
    signer = Signer(creds)
    base = {name: value for name, value in req["headers"].items() if name != "X-Sdk-Date"}
    date = format_sdk_date(moment)
    for path, query, body in [(req["path"], req["query"], req["body"]), *more]:
        ours = dict(base)
        signer.sign(req["method"], req["host"], path, query, ours, body, now=moment)
        sdk = _sdk_sign(
            creds, req["method"], req["host"], path, query, {**base, "X-Sdk-Date": date}, body
        )
        assert ours == _sdk_wire_headers(sdk)


def test_reused_header_set_with_a_new_date_and_body() -> None:
    signer = Signer(AkSk("AK", SK, TOKEN))
    fixed = {"Content-Type": "application/json;charset=UTF-8", "X-Project-Id": "p1"}
    for second, (path, body) in enumerate([("/a", b"{}"), ("/b/%20c", b""), ("/a", b"[1]")]):
        now = DATE_DT + timedelta(seconds=second)
        ours = dict(fixed)
        signer.sign("POST", HOST, path, [("q", "1")], ours, body, now=now)
        sdk_headers = {**fixed, "X-Sdk-Date": format_sdk_date(now)}
        sdk = _sdk_sign(AkSk("AK", SK, TOKEN), "POST", HOST, path, [("q", "1")], sdk_headers, body)
        assert ours == _sdk_wire_headers(sdk)
        assert list(ours)[:2] == ["Content-Type", "X-Project-Id"]  # added headers go after
    # What the signer keeps between requests never shows a secret (tracebacks print locals).
    kept = repr(signer._templates) + repr(signer._body_hashes)
    assert TOKEN not in kept
    assert SK not in kept


@FAST
@given(path=_paths)
def test_canonical_uri_equals_sdk(path: str) -> None:
    sdk = SdkSigner(BasicCredentials("AK", SK))
    assert canonical_uri(path) == sdk._process_canonical_uri(SdkRequest(resource_path=path))


@FAST
@given(query=_queries)
def test_canonical_query_equals_sdk(query: list[tuple[str, str]]) -> None:
    expected = SdkSigner.process_canonical_query_string(SdkRequest(query_params=list(query)))
    assert canonical_query(query) == expected


@FAST
@given(
    moment=_dates,
    tz=st.sampled_from([None, UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]),
    path=_paths,
    body=_bodies,
)
def test_sign_with_now_sets_date_and_matches_sdk(
    moment: datetime, tz: timezone | None, path: str, body: bytes
) -> None:
    now = moment if tz is None else moment.replace(tzinfo=UTC).astimezone(tz)
    headers = {"Content-Type": "application/json;charset=UTF-8"}
    Signer(AkSk("AK", SK)).sign("POST", HOST, path, [], headers, body, now=now)
    assert headers["X-Sdk-Date"] == moment.strftime("%Y%m%dT%H%M%SZ")
    assert headers["Host"] == HOST
    sdk = _sdk_sign(
        AkSk("AK", SK),
        "POST",
        HOST,
        path,
        [],
        {"Content-Type": "application/json;charset=UTF-8", "X-Sdk-Date": headers["X-Sdk-Date"]},
        body,
    )
    assert headers["Authorization"] == sdk.header_params["Authorization"]


def test_sign_without_now_uses_current_utc_time() -> None:
    headers: dict[str, str] = {}
    before = datetime.now(UTC).replace(microsecond=0)
    Signer(AkSk("AK", SK)).sign("GET", HOST, "/v1/p/jobs", [], headers, b"")
    after = datetime.now(UTC)
    stamped = datetime.strptime(headers["X-Sdk-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= stamped <= after


def test_known_vector_and_documented_shape() -> None:
    headers = {"X-Sdk-Date": DATE, "Content-Type": "application/json;charset=UTF-8"}
    Signer(AkSk("AKEXAMPLE", SK)).sign("POST", HOST, "/v1/p/jobs/j1/start", [], headers, b"{}")
    assert re.fullmatch(
        r"SDK-HMAC-SHA256 Access=AKEXAMPLE, SignedHeaders=content-type;host;x-sdk-date, "
        r"Signature=[0-9a-f]{64}",
        headers["Authorization"],
    )
    assert "X-Security-Token" not in headers
    assert "X-Sdk-Content-Sha256" not in headers


def test_unsigned_payload_and_underscore_headers() -> None:
    headers = {"X-Sdk-Date": DATE, "Content-Type": "text/plain", "my_header": " v "}
    Signer(AkSk("AK", SK, TOKEN)).sign("PUT", HOST, "/x", [], headers, b"raw")
    assert headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["X-Security-Token"] == TOKEN
    assert headers["my_header"] == "v"  # stripped, sent, but not signed
    signed = "SignedHeaders=content-type;host;x-sdk-content-sha256;x-sdk-date;x-security-token,"
    assert signed in headers["Authorization"]
    assert "my_header" not in headers["Authorization"]


def test_caller_supplied_content_sha256_matches_sdk() -> None:
    # The SDK uses a present X-Sdk-Content-Sha256 as the payload hash, read after its
    # UTF-8-as-Latin-1 rewrite of header values; ours must agree even on this oddity.
    for value in ("UNSIGNED-PAYLOAD", " abc ", "ñ"):
        headers = {
            "X-Sdk-Date": DATE,
            "Content-Type": "application/json",
            "x-sdk-content-sha256": value,
        }
        ours = dict(headers)
        Signer(AkSk("AK", SK)).sign("POST", HOST, "/x", [], ours, b"{}")
        sdk = _sdk_sign(AkSk("AK", SK), "POST", HOST, "/x", [], headers, b"{}")
        assert ours == _sdk_wire_headers(sdk)


def test_canonical_uri_examples() -> None:
    # An encoded "/" inside a job name becomes a separator in the canonical form.
    assert canonical_uri("/v1/p/jobs/a%2Fb/start") == "/v1/p/jobs/a/b/start/"
    assert canonical_uri("/v1/p/jobs/a/b/start") == "/v1/p/jobs/a/b/start/"
    assert canonical_uri("/a/../b/") == "/a/../b/"
    assert canonical_uri("/%E4%BD%9C%E4%B8%9A%20x~") == "/%E4%BD%9C%E4%B8%9A%20x~/"
    assert canonical_uri("/作业") == "/%E4%BD%9C%E4%B8%9A/"
    assert canonical_uri("/q%3F%23") == "/q%3F%23/"
    assert canonical_uri("/") == "/"
    assert canonical_uri("") == "/"


def test_canonical_query_examples() -> None:
    assert canonical_query([]) == ""
    assert canonical_query([("b", "2"), ("a", "x y"), ("a", "1")]) == "a=1&a=x%20y&b=2"
    assert canonical_query([("k", "a+b/c~")]) == "k=a%2Bb%2Fc~"


def test_sign_rejects_reuse_and_bad_date() -> None:
    signer = Signer(AkSk("AK", SK, TOKEN))
    headers = {"X-Sdk-Date": DATE}
    signer.sign("GET", HOST, "/", [], headers, b"")
    with pytest.raises(ValueError, match="Authorization") as reused:
        signer.sign("GET", HOST, "/", [], headers, b"")
    with pytest.raises(ValueError, match="X-Sdk-Date") as bad_date:
        signer.sign("GET", HOST, "/", [], {"x-sdk-date": "2024-10-30T08:15:00Z"}, b"")
    for info in (reused, bad_date):
        assert SK not in str(info.value)
        assert TOKEN not in str(info.value)


# ------------------------------------------------------------------------------ verify


def _secret_for(known: dict[str, str]) -> Any:
    return known.get


def _signed(req: dict[str, Any], creds: AkSk) -> dict[str, str]:
    headers = dict(req["headers"])
    Signer(creds).sign(req["method"], req["host"], req["path"], req["query"], headers, req["body"])
    return headers


def _check(
    req: dict[str, Any],
    headers: dict[str, str],
    known: dict[str, str],
    *,
    path: str | None = None,
    query: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    now: datetime | None = None,
) -> str | None:
    return verify(
        req["method"],
        req["path"] if path is None else path,
        req["query"] if query is None else query,
        headers,
        req["body"] if body is None else body,
        _secret_for(known),
        now=_date_of(headers) if now is None else now,
    )


def _date_of(headers: dict[str, str]) -> datetime:
    return datetime.strptime(headers["X-Sdk-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@FAST
@given(req=_requests(), ak=_aks, sk=_sks, token=_tokens)
def test_verify_accepts_what_sign_produced(
    req: dict[str, Any], ak: str, sk: str, token: str | None
) -> None:
    headers = _signed(req, AkSk(ak, sk, token))
    assert _check(req, headers, {ak: sk}) is None
    # Header names are looked up case-insensitively.
    upper = {k.upper(): v for k, v in headers.items()}
    assert _check(req, upper, {ak: sk}, now=_date_of(headers)) is None


@FAST
@given(req=_requests(), sk=_sks)
def test_verify_rejects_tampering(req: dict[str, Any], sk: str) -> None:
    headers = _signed(req, AkSk("AK1", sk))
    known = {"AK1": sk}
    # Wrong secret, unknown key.
    assert _check(req, headers, {"AK1": sk + "x"}) == "signature mismatch"
    assert _check(req, headers, {"OTHER": sk}) == "unknown access key"
    # Path, query, a signed header.
    assert _check(req, headers, known, path=req["path"] + "x") == "signature mismatch"
    assert _check(req, headers, known, query=[*req["query"], ("t", "1")]) == "signature mismatch"
    host_key = next(k for k in headers if k.lower() == "host")
    assert _check(req, {**headers, host_key: headers[host_key] + "x"}, known) is not None
    # Body: covered unless the SDK rules made it UNSIGNED-PAYLOAD.
    tampered = _check(req, headers, known, body=req["body"] + b"x")
    if "X-Sdk-Content-Sha256" in headers and req["body"]:
        assert tampered is None
    else:
        assert tampered == "signature mismatch"


@FAST
@given(req=_requests(), skew=st.floats(min_value=0, max_value=899), sign=st.sampled_from([-1, 1]))
def test_verify_date_window(req: dict[str, Any], skew: float, sign: int) -> None:
    headers = _signed(req, AkSk("AK", SK))
    date = _date_of(headers)
    assert _check(req, headers, {"AK": SK}, now=date + sign * timedelta(seconds=skew)) is None
    stale = date + sign * timedelta(seconds=901 + skew)
    assert _check(req, headers, {"AK": SK}, now=stale) == "X-Sdk-Date too far from server time"


def test_verify_structural_rejections() -> None:
    req: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/p/jobs/j/start",
        "query": [],
        "body": b"{}",
    }
    headers = {"X-Sdk-Date": DATE, "Content-Type": "application/json"}
    Signer(AkSk("AK", SK)).sign("POST", HOST, req["path"], [], headers, b"{}")
    known = {"AK": SK}
    assert _check(req, headers, known, now=DATE_DT.replace(tzinfo=None)) is None  # naive = UTC
    without = {k: v for k, v in headers.items() if k != "Authorization"}
    assert _check(req, without, known, now=DATE_DT) == "missing Authorization header"
    garbled = {**headers, "Authorization": "Basic abc"}
    assert _check(req, garbled, known, now=DATE_DT) == "malformed Authorization header"
    no_date = {k: v for k, v in headers.items() if k != "X-Sdk-Date"}
    assert _check(req, no_date, known, now=DATE_DT) == "missing X-Sdk-Date header"
    no_host = {k: v for k, v in headers.items() if k != "Host"}
    assert _check(req, no_host, known, now=DATE_DT) == "a signed header is missing"
    unsorted = {**headers, "Authorization": headers["Authorization"].replace("content-type;", "")}
    assert _check(req, unsorted, known, now=DATE_DT) == "signature mismatch"


def test_encoded_slash_is_not_covered_by_the_signature() -> None:
    """The SDK decodes %2F before splitting: a job "a/b" and the path /a/b sign the same."""
    req: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/p/jobs/a%2Fb/start",
        "query": [],
        "body": b"",
    }
    headers = {"X-Sdk-Date": DATE}
    Signer(AkSk("AK", SK)).sign("POST", HOST, req["path"], [], headers, b"")
    assert _check(req, headers, {"AK": SK}, path="/v1/p/jobs/a/b/start") is None


# ----------------------------------------------------------------------------- secrecy


_REASONS = {
    None,
    "missing Authorization header",
    "malformed Authorization header",
    "missing X-Sdk-Date header",
    "malformed X-Sdk-Date header",
    "X-Sdk-Date too far from server time",
    "SignedHeaders must be sorted and include x-sdk-date",
    "a signed header is missing",
    "unknown access key",
    "signature mismatch",
}


@FAST
@given(req=_requests(), sk=_sks.map(lambda s: "§SK§" + s), token=_tokens)
def test_no_reason_contains_a_secret(req: dict[str, Any], sk: str, token: str | None) -> None:
    headers = _signed(req, AkSk("AK", sk, token))
    for known in ({"AK": sk + "!"}, {}, {"AK": sk}):
        reason = _check(req, headers, known, body=req["body"] + b"x")
        # Reasons are fixed texts: nothing from the request or the key store is echoed.
        assert reason in _REASONS
        assert reason is None or (sk not in reason and (token or "§") not in reason)


def test_reprs_hide_secrets() -> None:
    creds = AkSk("AKID", SK, TOKEN)
    signer = Signer(creds)
    for text in (repr(creds), str(creds), repr(signer), str(signer), f"{creds!r} {signer}"):
        assert SK not in text
        assert TOKEN not in text
    assert "AKID" in repr(creds)
    assert signer.access_key == "AKID"
    assert signer.temporary
    assert not Signer(AkSk("AKID", SK)).temporary


def test_empty_credentials_rejected_without_secret_in_message() -> None:
    with pytest.raises(ValueError, match="AK is empty") as no_ak:
        AkSk("", SK)
    with pytest.raises(ValueError, match="SK is empty"):
        AkSk("AK", "")
    assert SK not in str(no_ak.value)


def test_empty_body_hash_constant() -> None:
    import hashlib

    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256


@given(
    secret=st.one_of(
        st.text(min_size=1, max_size=40),
        st.text(min_size=60, max_size=200),  # around and past the 64-byte block
        st.binary(min_size=1, max_size=130).map(lambda raw: raw.decode("latin-1")),
    ),
    message=st.binary(max_size=300),
)
def test_hmac_pads_equal_the_standard_hmac(secret: str, message: bytes) -> None:
    """The pre-keyed SHA-256 states (a measured speed trick, benchmarks/RESULTS.md) are
    HMAC-SHA256 as `hmac` computes it, for keys shorter, as long and longer than a block."""
    inner, outer = _hmac_pads(secret)
    inner, outer = inner.copy(), outer.copy()
    inner.update(message)
    outer.update(inner.digest())
    key = secret.encode("utf-8")
    assert outer.hexdigest() == hmac.new(key, message, hashlib.sha256).hexdigest()
