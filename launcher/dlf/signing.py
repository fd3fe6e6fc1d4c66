"""AK/SK request signing (``SDK-HMAC-SHA256``), byte-for-byte compatible with the official SDK.

Pure functions and objects only: no I/O, no clock except ``time.time()`` when the caller does
not pass ``now``. The algorithm (see ``/work/shared/reference/dlf-api-notes.md``):

1. Add ``X-Sdk-Date: YYYYMMDDTHHMMSSZ`` (UTC) and ``Host`` unless present (any case);
   temporary credentials add ``X-Security-Token`` first; a ``Content-Type`` that is neither
   ``application/json…`` nor ``application/bson…`` adds ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD``.
2. Signed headers: every header name lower-cased and sorted; names containing ``_`` are sent
   but not signed.
3. Canonical request: ``METHOD\\nURI\\nQUERY\\nHEADERS\\nSIGNED\\nHEX(SHA256(body))``.
4. String to sign: ``SDK-HMAC-SHA256\\n{X-Sdk-Date}\\nHEX(SHA256(canonical request))``.
5. ``Authorization: SDK-HMAC-SHA256 Access={AK}, SignedHeaders={a;b}, Signature={hex hmac}``.

What goes on the wire must be what was signed:

* the path exactly as given to :meth:`Signer.sign` (already percent-encoded; the request
  line carries it as it is, so nothing re-encodes it or removes ``..`` segments);
* the query string exactly as :func:`canonical_query` renders it (the SDK sends that string);
* the header values :meth:`Signer.sign` leaves in ``headers`` (stripped ``str``), encoded as
  UTF-8 (``launcher.dlf.client`` writes the request head so; the IAM login's aiohttp
  session does the same).

Secrets (SK, security token) never appear in a ``repr``, ``str`` or error message made here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "AkSk",
    "Prepared",
    "Signer",
    "canonical_query",
    "canonical_uri",
    "format_sdk_date",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Content types whose body the SDK hashes; any other non-empty Content-Type makes it send
# X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD instead (prefix match, like the SDK's startswith).
_HASHED_CONTENT_TYPES = ("application/json", "application/bson")
_AUTH_PREFIX = ALGORITHM + " Access="
# Paths made only of RFC 3986 unreserved characters and "/" are their own canonical form
# (unquote and quote are both the identity on them): the common case skips both calls.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
_SDK_DATE = re.compile(r"\d{8}T\d{6}Z")
# Signer caches, bounded: a run signs a handful of header sets (one per project and
# workspace) and bodies (one per parameter set); past these sizes a cache starts over.
_MAX_TEMPLATES = 64
_MAX_BODY_HASHES = 256
_MAX_CACHED_BODY = 1024  # bytes: larger bodies are hashed every time


@dataclass(frozen=True, slots=True)
class Prepared:
    """A header set prepared for signing: what a signature needs that depends only on the
    method, host and headers (see :meth:`Signer.prepare`).

    `additions` are the headers :meth:`Signer.sign` adds, in order, each with its value
    (None: the X-Sdk-Date, which :meth:`Signer.signature` returns), Authorization aside.

    The canonical request is ``{method}\\n{uri}\\n{query}\\n{head}{date}{tail}{payload hash}``:
    `head` and `tail` hold every canonical header line but the date's, the signed-header
    list and the separators.
    """

    method: str
    # These three may hold the security token: kept out of the repr.
    additions: tuple[tuple[str, str | None], ...] = field(repr=False)
    head: str = field(repr=False)
    tail: str = field(repr=False)
    content_sha256: str | None  # the payload hash a X-Sdk-Content-Sha256 header imposes
    authorization: str  # the Authorization value up to the signature


_TEMPLATE_DATE = "19700101T000000Z"  # stands in for the date while a template is made
# A header set whose signature cannot be templated (caller-supplied X-Sdk-Date or
# Authorization, values with surrounding blanks): signed the general way each time.
_GENERAL = Prepared("", (), "", "", None, "")


@dataclass(frozen=True, slots=True)
class AkSk:
    """An access key pair; ``security_token`` is set for temporary (STS) credentials."""

    ak: str
    sk: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Same checks as the SDK, with messages that name the field and never its value.
        if not self.ak:
            raise ValueError("AK is empty")
        if not self.sk:
            raise ValueError("SK is empty")


def _encode(s: str) -> str:
    # quote() always leaves letters, digits and "_.-~" alone; safe="~" adds nothing else,
    # so "/" is escaped too: the SDK's per-segment encoding. A segment made only of those
    # is its own encoding: the regex is a fraction of quote()'s cost.
    if _UNRESERVED.fullmatch(s):
        return s
    return quote(s, safe="~")


def canonical_uri(path: str) -> str:
    """Return the canonical URI of a wire path, exactly as the official SDK computes it.

    The SDK percent-decodes the *whole* path, splits it on ``/``, re-encodes each segment
    (only unreserved characters left alone) and appends ``/`` when absent. So an encoded
    ``%2F`` inside a segment becomes a separator: ``/jobs/a%2Fb`` and ``/jobs/a/b`` have the
    same canonical URI ``/jobs/a/b/``. (The SDK fails on an empty path; here it gives ``/``.)
    """
    if _PLAIN_PATH.fullmatch(path):
        return path if path.endswith("/") else path + "/"
    uri = "/".join([_encode(segment) for segment in unquote(path).split("/")])
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: Sequence[tuple[str, str]]) -> str:
    """Return the canonical query string; it is also the query string to send.

    Pairs are sorted on their *decoded* (key, value), then keys and values are encoded like
    path segments (space → ``%20``, never ``+``) and joined with ``&``. Repeated keys are kept.
    """
    if not query:
        return ""
    return "&".join([_encode(k) + "=" + _encode(v) for k, v in sorted(query)])


def format_sdk_date(moment: datetime) -> str:
    """Format a moment as ``X-Sdk-Date`` (``YYYYMMDDTHHMMSSZ``); naive datetimes are UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(_DATE_FORMAT)


def _parse_sdk_date(value: str) -> datetime | None:
    if not _SDK_DATE.fullmatch(value):
        return None
    try:
        return datetime.strptime(value, _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _payload_hash(body: bytes, content_sha256: str | None) -> str:
    if not body:
        # Even with UNSIGNED-PAYLOAD: the SDK checks for an empty body first.
        return EMPTY_SHA256
    if content_sha256:
        # The SDK reads this header after turning header values into their UTF-8 bytes
        # decoded as Latin-1 (identity for ASCII, the only sane content here).
        return content_sha256.encode("utf-8").decode("latin-1")
    return hashlib.sha256(body).hexdigest()


def _string_to_sign(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    canonical_headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
    date: str,
) -> tuple[str, str]:
    """Return (string to sign, "a;b;c" signed-header list)."""
    signed_list = ";".join(signed)
    lines = [
        method.upper(),
        canonical_uri(path),
        canonical_query(query),
        # One "name:value" line per signed name (a name signed twice repeats its line, as in
        # the SDK), then the empty line that the SDK's trailing "\n" produces.
        *[name + ":" + canonical_headers[name] for name in signed],
        "",
        signed_list,
        _payload_hash(body, canonical_headers.get("x-sdk-content-sha256")),
    ]
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}", signed_list


def _hmac_pads(secret: str) -> tuple[HASH, HASH]:
    """HMAC-SHA256 keyed with `secret` (RFC 2104) as its two pre-keyed SHA-256 states.

    HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), K' being the key padded to the
    64-byte block (hashed first when longer). Copying and finishing the two states is
    half the cost of `hmac.HMAC.copy()` and its Python wrapper, per request.
    """
    key = secret.encode("utf-8")
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


class Signer:
    """Signs requests with one AK/SK pair; cheap to call thousands of times a second."""

    __slots__ = ("_ak", "_body_hashes", "_dated", "_inner", "_outer", "_templates", "_token")

    def __init__(self, creds: AkSk) -> None:
        """Prepare a signer for `creds` (the SK is only kept inside keyed SHA-256 states)."""
        self._ak = creds.ak
        self._token = creds.security_token
        # Keying HMAC costs two SHA-256 block compressions; do it once, .copy() per request.
        self._inner, self._outer = _hmac_pads(creds.sk)
        # (epoch second, its X-Sdk-Date, the inner state with the string to sign up to the
        # digest absorbed): one tuple so a reader never sees a torn set. The prefix changes
        # once a second; absorbing it once spares every request its formatting and update.
        self._dated: tuple[int, str, HASH] = (-1, "", self._inner)
        self._templates: dict[tuple[object, ...], Prepared] = {}
        self._body_hashes: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"Signer(ak={self._ak!r}, temporary={self._token is not None})"

    @property
    def access_key(self) -> str:
        """The AK (an identifier, not a secret)."""
        return self._ak

    @property
    def temporary(self) -> bool:
        """True for temporary credentials (a security token is sent)."""
        return self._token is not None

    def _now_dated(self) -> tuple[int, str, HASH]:
        """(second, X-Sdk-Date, keyed inner state with its prefix) for the current second."""
        second = int(time.time())
        dated = self._dated
        if dated[0] != second:
            date = time.strftime(_DATE_FORMAT, time.gmtime(second))
            dated = self._dated = (second, date, self._keyed_with(date))
        return dated

    def _keyed_with(self, date: str) -> HASH:
        inner = self._inner.copy()
        inner.update(f"{ALGORITHM}\n{date}\n".encode())
        return inner

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        *,
        now: datetime | None = None,
    ) -> None:
        """Add X-Sdk-Date (unless present), Host (unless present), X-Security-Token
        (temporary credentials) and Authorization to `headers`, in place.

        `path` is the path exactly as it goes on the wire (already percent-encoded); `host`
        is the ``Host`` value (``name[:port]``). Afterwards every value in `headers` is the
        stripped ``str`` that was signed: send it UTF-8 encoded (the client does). The SDK
        instead stores UTF-8-bytes-decoded-as-Latin-1 strings because ``requests`` encodes
        Latin-1; the bytes on the wire are the same. It may also add
        ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` (non-JSON ``Content-Type``, exact key).

        Sign a fresh headers dict for every attempt: a present X-Sdk-Date is kept (it must be
        ``YYYYMMDDTHHMMSSZ``, else ValueError), and a present Authorization is a ValueError,
        because re-signing it would send a request the gateway rejects (and five rejections
        lock the key pair).
        """
        key = (method, host, *headers.items())
        template = self._templates.get(key)
        if template is None:
            template = self._template(method, host, headers)
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            self._templates[key] = template
        if template is _GENERAL:
            self._sign_general(method, host, path, query, headers, body, now)
            return
        date, authorization = self.signature(template, path, query, body, now=now)
        for name, value in template.additions:
            headers[name] = date if value is None else value
        headers["Authorization"] = authorization

    def prepare(self, method: str, host: str, headers: Mapping[str, str]) -> Prepared | None:
        """Prepare `headers` (as a caller would pass them to :meth:`sign`) for signing many
        requests with :meth:`signature`; None when this header set can only be signed by
        :meth:`sign` (a caller's X-Sdk-Date or Authorization, values with blanks to strip,
        names equal but for case).

        For a caller that sends many requests with one header set (the client, per project
        and workspace): it keeps the result, and per request gets the two values that vary
        from :meth:`signature` instead of having a headers dict copied, looked up and filled.
        """
        template = self._template(method, host, headers)
        return None if template is _GENERAL else template

    def signature(
        self,
        prepared: Prepared,
        path: str,
        query: Sequence[tuple[str, str]],
        body: bytes,
        *,
        now: datetime | None = None,
    ) -> tuple[str, str]:
        """(X-Sdk-Date, Authorization) for one request with a prepared header set.

        The values :meth:`sign` would put in the headers for the same request and moment;
        the other headers it would add are ``prepared.additions``. `path` is the wire path.
        """
        if now is None:
            _, date, keyed = self._now_dated()
        else:
            date = format_sdk_date(now)
            keyed = self._keyed_with(date)
        if not body:
            payload = EMPTY_SHA256
        elif prepared.content_sha256:
            payload = prepared.content_sha256
        else:
            payload = self._body_hashes.get(body) or self._body_hash(body)
        canonical_request = (
            f"{prepared.method}\n{canonical_uri(path)}\n"
            f"{canonical_query(query) if query else ''}\n"
            f"{prepared.head}{date}{prepared.tail}{payload}"
        )
        inner = keyed.copy()
        inner.update(hashlib.sha256(canonical_request.encode()).hexdigest().encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return date, prepared.authorization + outer.hexdigest()

    def _body_hash(self, body: bytes) -> str:
        """Hex SHA-256 of a body missing from `_body_hashes`, remembered there when small:
        a run sends few distinct bodies."""
        digest = hashlib.sha256(body).hexdigest()
        if len(body) <= _MAX_CACHED_BODY:
            cache = self._body_hashes
            if len(cache) >= _MAX_BODY_HASHES:
                cache.clear()
            cache[body] = digest
        return digest

    def _template(self, method: str, host: str, headers: Mapping[str, str]) -> Prepared:
        """Sign a copy of `headers` the general way and keep what does not vary."""
        if self._token is not None and self._token.strip() is not self._token:
            return _GENERAL
        lowered = set()
        for name, value in headers.items():
            lower = name.lower()
            if lower in lowered or value.strip() is not value:
                return _GENERAL  # case-duplicate names or blanks to strip: rare, general
            lowered.add(lower)
        if "x-sdk-date" in lowered or "authorization" in lowered:
            return _GENERAL  # a caller's date (or a reuse: the general way raises)
        probe = dict(headers)
        canonical, signed = self._prepare_headers(host, probe, _TEMPLATE_DATE)
        if signed.count("x-sdk-date") != 1:
            return _GENERAL
        additions = tuple(
            (name, None if name == "X-Sdk-Date" else value)
            for name, value in probe.items()
            if headers.get(name) != value
        )
        lines = [name + ":" + canonical[name] for name in signed]
        at = signed.index("x-sdk-date")
        signed_list = ";".join(signed)
        content_sha256 = canonical.get("x-sdk-content-sha256")
        return Prepared(
            method=method.upper(),
            additions=additions,
            head="".join(line + "\n" for line in lines[:at]) + "x-sdk-date:",
            tail="".join("\n" + line for line in lines[at + 1 :]) + f"\n\n{signed_list}\n",
            content_sha256=_payload_hash(b"-", content_sha256) if content_sha256 else None,
            authorization=f"{_AUTH_PREFIX}{self._ak}, SignedHeaders={signed_list}, Signature=",
        )

    def _prepare_headers(
        self, host: str, headers: dict[str, str], date: str
    ) -> tuple[dict[str, str], list[str]]:
        """Add the headers signing adds, strip values, in place: (canonical, sorted signed).

        `date` is the X-Sdk-Date to add when the headers carry none.
        """
        if self._token is not None:
            headers["X-Security-Token"] = self._token
        content_type = headers.get("Content-Type")
        if content_type and not content_type.startswith(_HASHED_CONTENT_TYPES):
            headers["X-Sdk-Content-Sha256"] = _UNSIGNED_PAYLOAD

        canonical: dict[str, str] = {}
        signed: list[str] = []
        for name, value in headers.items():
            lower = name.lower()
            stripped = value.strip()
            if stripped is not value:  # str.strip returns the same object when unchanged
                headers[name] = stripped  # same size: safe while iterating
            canonical[lower] = stripped  # last one wins on case-duplicates, like the SDK
            if "_" not in name:
                signed.append(lower)
        if "authorization" in canonical:
            raise ValueError("headers already carry Authorization; sign a fresh copy")

        given = canonical.get("x-sdk-date")
        if given is None:
            headers["X-Sdk-Date"] = canonical["x-sdk-date"] = date
            signed.append("x-sdk-date")
        elif _parse_sdk_date(given) is None:
            raise ValueError("X-Sdk-Date header is not YYYYMMDDTHHMMSSZ")
        if "host" not in canonical:
            headers["Host"] = canonical["host"] = host
            signed.append("host")
        signed.sort()
        return canonical, signed

    def _sign_general(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        now: datetime | None,
    ) -> None:
        """`sign` without a template: every step from the headers as given."""
        now_date = self._now_dated()[1] if now is None else format_sdk_date(now)
        canonical, signed = self._prepare_headers(host, headers, now_date)
        string_to_sign, signed_list = _string_to_sign(
            method, path, query, canonical, signed, body, canonical["x-sdk-date"]
        )
        inner = self._inner.copy()
        inner.update(string_to_sign.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        headers["Authorization"] = (
            f"{_AUTH_PREFIX}{self._ak}, SignedHeaders={signed_list}, Signature={outer.hexdigest()}"
        )


def _keyed_mac(secret: str | None) -> hmac.HMAC | None:
    # A helper so that the secret is a local only for the length of this call, never in
    # verify()'s frame (tracebacks that show locals would print it).
    if secret is None:
        return None
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)


def _parse_authorization(value: str) -> tuple[str, str, str] | None:
    """Split ``SDK-HMAC-SHA256 Access=A, SignedHeaders=a;b, Signature=hex`` into its parts."""
    if not value.startswith(_AUTH_PREFIX):
        return None
    parts = value[len(ALGORITHM) + 1 :].split(", ")
    if len(parts) != 3:
        return None
    access, signed, signature = parts
    if not (
        access.startswith("Access=")
        and signed.startswith("SignedHeaders=")
        and signature.startswith("Signature=")
    ):
        return None
    return access[7:], signed[14:], signature[10:]


def verify(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    *,
    now: datetime,
    max_skew: float = 900.0,
) -> str | None:
    """Server side check (used by our simulator): None when the Authorization header is a valid
    SDK-HMAC-SHA256 signature by a known AK, else a short reason (never containing secrets).

    `headers` is case-insensitive-ish (lookup lower-cased names); signed headers are those
    named in SignedHeaders. Rejects X-Sdk-Date more than max_skew seconds from now. `path`
    is the raw (still encoded) request path; `query` the decoded query pairs; `now` naive
    means UTC. ``secret_for(ak)`` returns the SK of a known AK, else None.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    authorization = lowered.get("authorization")
    if authorization is None:
        return "missing Authorization header"
    parsed = _parse_authorization(authorization.strip())
    if parsed is None:
        return "malformed Authorization header"
    ak, signed_list, signature = parsed

    date = lowered.get("x-sdk-date")
    if date is None:
        return "missing X-Sdk-Date header"
    date = date.strip()
    moment = _parse_sdk_date(date)
    if moment is None:
        return "malformed X-Sdk-Date header"
    current = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    if abs((current - moment).total_seconds()) > max_skew:
        return "X-Sdk-Date too far from server time"

    signed = signed_list.split(";")
    if signed != sorted(signed) or "x-sdk-date" not in signed:
        return "SignedHeaders must be sorted and include x-sdk-date"
    canonical: dict[str, str] = {}
    for name in signed:
        value = lowered.get(name)
        if value is None:
            return "a signed header is missing"
        canonical[name] = value.strip()
    content_sha256 = lowered.get("x-sdk-content-sha256")
    if content_sha256 is not None:
        canonical["x-sdk-content-sha256"] = content_sha256.strip()

    string_to_sign, _ = _string_to_sign(method, path, query, canonical, signed, body, date)
    # Resolve the secret last: no work is wasted on junk, and an unknown AK is not told
    # apart from a bad signature by timing of the cheap checks above.
    mac = _keyed_mac(secret_for(ak))
    if mac is None:
        return "unknown access key"
    mac.update(string_to_sign.encode("utf-8"))
    if not hmac.compare_digest(mac.hexdigest(), signature):
        return "signature mismatch"
    return None
