"""HTTP answers turned into `Reply` values, error bodies read as the official SDK reads them.

The SDK (huaweicloudsdkcore/exceptions/exception_handler.py, `_process_sdk_error`) takes
the error code and message from the first of these shapes present at the top level;
failing that, it walks every nested object the same way, the last one with a pair
winning:

    {"error_code": "DLF.0100", "error_msg": "..."}        DLF, API gateway
    {"errorCode": "...", "errorMsg": "..."}               some services' camelCase
    {"code": "...", "message": "..."}                     plain shape
    {"error": {"code": "APIGW.0307", "message": "..."}}   nested (gateway, IAM)

The SDK wants both keys of a pair; we also take a code that comes without its message
(a token-expiry 401 shaped `{"error": {"code": "APIGW.0307"}}` must still read as
APIGW.0307, or the run stops instead of renewing the token). Codes that are not
strings (IAM's keystone shape has `"code": 401`) are not error codes.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson

from launcher.models import Reply, ReplyFields, from_fields

__all__ = ["error_fields", "reply_from_answer", "retry_after", "service_clock"]

_PAIRS = (("error_code", "error_msg"), ("errorCode", "errorMsg"), ("code", "message"))


def error_fields(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """(error code, message) from an error body, as the SDK finds them, else a lone code."""
    found = _sdk_pair(payload, 0)
    code, message = (None, None) if found is None else (_text(found[0]), _text(found[1]))
    if code is None:
        code = _lone_code(payload, 0)
    return code, message


def _sdk_pair(payload: dict[str, Any], depth: int) -> tuple[object, object] | None:
    # The SDK's walk: the first pair present at this level; else every nested object in
    # turn, the last one that has a pair winning.
    for code_key, message_key in _PAIRS:
        if code_key in payload and message_key in payload:
            return payload[code_key], payload[message_key]
    found = None
    if depth < 8:
        for value in payload.values():
            if isinstance(value, dict):
                found = _sdk_pair(value, depth + 1) or found
    return found


def _lone_code(payload: dict[str, Any], depth: int) -> str | None:
    # Not in the SDK: a code without its message still names the error.
    for code_key, _ in _PAIRS:
        code = _text(payload.get(code_key))
        if code is not None:
            return code
    nested = payload.get("error")
    return _lone_code(nested, depth + 1) if isinstance(nested, dict) and depth < 8 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def reply_from_answer(
    status: int, headers: dict[str, str], raw: bytes, latency: float
) -> tuple[Reply, dict[str, Any] | None]:
    """A `Reply` (and the JSON payload, if any) from an answer; `headers` keys lower-cased."""
    request_id = headers.get("x-request-id")
    after = retry_after(headers.get("retry-after")) if status in (429, 503) else None
    if status == 204 or not raw:  # (the common answer: made without NamedTuple's __new__)
        fields: ReplyFields = (status, latency, None, None, request_id, None, after, None, None)
        return from_fields(Reply, fields), None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return Reply(status, latency, request_id=request_id, retry_after=after), None
    if status < 300:
        return Reply(status, latency, request_id=request_id), payload
    code, message = error_fields(payload)
    body_request_id = payload.get("request_id")
    return (
        Reply(
            status,
            latency,
            error_code=code,
            error_msg=message,
            request_id=body_request_id if isinstance(body_request_id, str) else request_id,
            retry_after=after,
        ),
        payload,
    )


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def service_clock(date: str | None) -> float | None:
    """The service's clock (Unix seconds) from an answer's `Date` header; None if absent."""
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
