"""Region tables: the SDK's, entry for entry (the SDK is the oracle)."""

from __future__ import annotations

import pytest
from huaweicloudsdkcore.auth import endpoint as sdk_iam
from huaweicloudsdkcore.auth.internal import IamHelper
from huaweicloudsdkdgc.v1.region.dgc_region import DgcRegion

from launcher.dlf.regions import DLF_ENDPOINTS, IAM_DEFAULT, dlf_endpoint, iam_endpoint
from launcher.errors import UsageError


def test_dlf_table_is_the_sdks() -> None:
    sdk = {region_id: region.endpoint for region_id, region in DgcRegion.static_fields.items()}
    assert sdk == DLF_ENDPOINTS
    assert dlf_endpoint("cn-east-4") == "https://dayu.cn-east-4.myhuaweicloud.com"
    assert dlf_endpoint("eu-west-101") == "https://dayu-dlf.eu-west-101.myhuaweicloud.com"


def test_iam_endpoints_are_the_sdks_with_its_fallback() -> None:
    assert IAM_DEFAULT == IamHelper.DEFAULT_ENDPOINT
    for region in DLF_ENDPOINTS:
        assert iam_endpoint(region) == sdk_iam.get_iam_endpoint_by_id(region, IAM_DEFAULT)
    assert iam_endpoint("eu-west-0") == "https://iam.eu-west-0.myhuaweicloud.com"


@pytest.mark.parametrize(
    ("region", "hint"),
    [("cn-north4", "cn-north-4"), ("ap-southeast-9", "ap-southeast-"), ("xyzzy", None)],
)
def test_an_unknown_region_lists_the_known_ones_with_a_suggestion(
    region: str, hint: str | None
) -> None:
    with pytest.raises(UsageError) as info:
        dlf_endpoint(region)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "known regions: ae-ad-1, af-south-1, " in message  # all of them, sorted
    assert "cn-north-4, " in message
    assert "--endpoint" in message
    if hint is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean {hint}" in message
