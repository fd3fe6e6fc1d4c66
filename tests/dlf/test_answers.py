"""Error bodies read as the official SDK reads them (its handler is the oracle), and the
answer-to-Reply mapping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from huaweicloudsdkcore.exceptions.exception_handler import DefaultExceptionHandler
from huaweicloudsdkcore.exceptions.exceptions import SdkError
from hypothesis import given
from hypothesis import strategies as st

from launcher.dlf.answers import error_fields, reply_from_answer, service_clock
from launcher.flow.policy import Verdict, classify


def sdk_fields(payload: dict[str, Any]) -> tuple[object, object]:
    error = SdkError()
    DefaultExceptionHandler._process_sdk_error(error, payload)
    return error.error_code, error.error_msg


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"error_code": "DLF.0100", "error_msg": "gone"}, ("DLF.0100", "gone")),
        ({"errorCode": "DLF.3051", "errorMsg": "bad"}, ("DLF.3051", "bad")),
        ({"code": "APIGW.0308", "message": "slow down"}, ("APIGW.0308", "slow down")),
        ({"error": {"code": "APIGW.0307", "message": "renew"}}, ("APIGW.0307", "renew")),
        ({"error": {"error_code": "APIG.0307", "error_msg": "x"}}, ("APIG.0307", "x")),
        # The first pair wins, as in the SDK.
        (
            {"error_code": "IAM.0002", "error_msg": "m", "error": {"code": 401, "message": "n"}},
            ("IAM.0002", "m"),
        ),
        # Beyond the SDK: a code alone still names the error.
        ({"error": {"code": "APIGW.0307"}}, ("APIGW.0307", None)),
        ({"error_code": "DLF.0100"}, ("DLF.0100", None)),
        # Keystone's numeric code is no error code.
        ({"error": {"code": 401, "message": "Unauthorized"}}, (None, "Unauthorized")),
        ({}, (None, None)),
        ({"jobs": []}, (None, None)),
    ],
)
def test_error_shapes(payload: dict[str, Any], expected: tuple[str | None, str | None]) -> None:
    assert error_fields(payload) == expected


_code = st.sampled_from(["APIGW.0307", "DLF.0100", "APIG.0308", "x"])
_leaf = st.dictionaries(
    st.sampled_from(["error_code", "error_msg", "errorCode", "errorMsg", "code", "message", "a"]),
    _code,
    max_size=4,
)
_payload = st.recursive(
    _leaf,
    lambda inner: st.dictionaries(st.sampled_from(["error", "e"]), inner, max_size=2) | _leaf,
    max_leaves=6,
)


@given(_payload)
def test_agrees_with_the_sdk_wherever_the_sdk_finds_an_error(payload: dict[str, Any]) -> None:
    code, message = sdk_fields(payload)
    if isinstance(code, str) and code and isinstance(message, str) and message:
        assert error_fields(payload) == (code, message)


def test_a_nested_token_expiry_refreshes() -> None:
    raw = orjson.dumps({"error": {"code": "APIGW.0307", "message": "The token must be updated."}})
    reply, _ = reply_from_answer(401, {"x-request-id": "r"}, raw, 0.01)
    assert reply.error_code == "APIGW.0307"
    assert classify(reply) is Verdict.REFRESH_AUTH


def test_service_clock() -> None:
    assert service_clock("Sat, 05 Dec 2026 08:00:00 GMT") == 1796457600.0
    assert service_clock(None) is None
    assert service_clock("not a date") is None
