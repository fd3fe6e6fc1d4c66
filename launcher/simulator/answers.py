"""The simulator's answers: a decided status, body and headers, and the service's error shapes."""

from __future__ import annotations

from typing import Final

import orjson

__all__ = ["JSON", "Answer", "error", "iam_error", "reshape"]

JSON: Final = "application/json;charset=UTF-8"

MSG_NO_API: Final = "The API does not exist or has not been published in the environment."
MSG_THROTTLED: Final = "The throttling threshold has been reached"
MSG_BAD_SIGNATURE: Final = "Incorrect IAM authentication information: verify aksk signature fail"
MSG_LOCKED: Final = (
    "Incorrect IAM authentication information: AK access failed to reach the limit,forbidden."
)
MSG_BAD_TOKEN: Final = "Incorrect IAM authentication information: decrypt token fail"
MSG_NO_TOKEN: Final = "Incorrect IAM authentication information: x-auth-token not found"
MSG_EXPIRED_TOKEN: Final = "The token must be updated."
MSG_NO_JOB: Final = "The job does not exists."
MSG_INVALID: Final = "The request parameter is invalid"


class Answer:
    """A decided answer, built into an aiohttp response only when it is sent."""

    __slots__ = ("body", "error", "headers", "status")

    def __init__(
        self, status: int, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.error: tuple[str, str, str] | None = None  # (code, message, request id)


def error(status: int, code: str, message: str, rid: str) -> Answer:
    """The DLF / API gateway error body: top-level `error_code`, `error_msg`, `request_id`."""
    answer = Answer(
        status, orjson.dumps({"error_code": code, "error_msg": message, "request_id": rid})
    )
    answer.error = (code, message, rid)
    return answer


def reshape(answer: Answer, shape: str) -> None:
    """Render an error answer's body in another of the shapes the SDK reads (in place)."""
    if answer.error is None or shape == "flat":
        return
    code, message, rid = answer.error
    if shape == "camel":
        document: dict[str, object] = {"errorCode": code, "errorMsg": message}
    elif shape == "code":
        document = {"code": code, "message": message}
    else:  # nested, as some gateways and IAM wrap it
        document = {"error": {"code": code, "message": message}}
    document["request_id"] = rid
    answer.body = orjson.dumps(document)


def iam_error(status: int, code: str, message: str, rid: str) -> Answer:
    """IAM's own error shape (keystone-like "error" object), plus the fields every answer of
    this simulator carries."""
    title = "Unauthorized" if status == 401 else "Bad Request"
    body = {
        "error": {"code": status, "message": message, "title": title},
        "error_code": code,
        "error_msg": message,
        "request_id": rid,
    }
    return Answer(status, orjson.dumps(body))
