"""Region ids to endpoints, as the official SDK maps them.

DLF: the table of `huaweicloudsdkdgc/v1/region/dgc_region.py` (`DgcRegion`, SDK 3.1.219;
`huaweicloudsdkdlf/v1/region/dlf_region.py` lists a subset of the same entries). Two
entries differ from the pattern our notes (dlf-api-notes.md) give, and we follow the
SDK: cn-east-4 is served at `dayu.cn-east-4...` (not `dayu-dlf.`), and eu-west-101 at
`.myhuaweicloud.com` (not `.eu`).

IAM: the table of `huaweicloudsdkcore/auth/endpoint.py` (`__IAM_ENDPOINT_DICT`); a region
without its own IAM host uses the SDK's fallback, the global `https://iam.myhuaweicloud.com`
(`IamHelper.DEFAULT_ENDPOINT` in huaweicloudsdkcore/auth/internal.py). As in the SDK,
`HUAWEICLOUD_SDK_IAM_ENDPOINT` wins over both (see `launcher.dlf.auth`).

An unknown region id is a usage error listing the known ones, with the closest match
first; `--endpoint URL` reaches a region this table does not know yet.
"""

from __future__ import annotations

import difflib
from typing import Final

from launcher.errors import UsageError

__all__ = ["DLF_ENDPOINTS", "IAM_DEFAULT", "IAM_ENDPOINTS", "dlf_endpoint", "iam_endpoint"]


def _dayu(region: str) -> str:
    return f"https://dayu-dlf.{region}.myhuaweicloud.com"


DLF_ENDPOINTS: Final[dict[str, str]] = {
    region: _dayu(region)
    for region in (
        "cn-north-1",
        "cn-north-4",
        "cn-east-3",
        "cn-east-2",
        "cn-south-1",
        "ap-southeast-3",
        "ap-southeast-1",
        "ru-northwest-2",
        "cn-north-11",
        "ru-moscow-1",
        "my-kualalumpur-1",
        "tr-west-1",
        "cn-north-9",
        "cn-north-2",
        "ap-southeast-2",
        "af-south-1",
        "sa-brazil-1",
        "la-south-2",
        "la-north-2",
        "na-mexico-1",
        "cn-southwest-2",
        "ap-southeast-4",
        "me-east-1",
        "eu-west-101",
        "ae-ad-1",
    )
} | {"cn-east-4": "https://dayu.cn-east-4.myhuaweicloud.com"}

IAM_DEFAULT: Final = "https://iam.myhuaweicloud.com"

IAM_ENDPOINTS: Final[dict[str, str]] = {
    region: f"https://iam.{region}.myhuaweicloud.com"
    for region in (
        "cn-north-2",
        "cn-north-4",
        "cn-north-1",
        "cn-east-2",
        "cn-east-3",
        "cn-south-1",
        "cn-south-2",
        "cn-southwest-2",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "af-south-1",
        "sa-brazil-1",
        "la-south-2",
        "na-mexico-1",
        "la-north-2",
        "cn-north-9",
        "eu-west-0",
        "my-kualalumpur-1",
        "ru-moscow-1",
        "me-east-1",
        "ap-southeast-4",
        "ae-ad-1",
        "cn-east-4",
        "cn-east-5",
        "tr-west-1",
        "cn-north-12",
    )
}


def dlf_endpoint(region: str) -> str:
    """The DLF endpoint of a region id; UsageError (exit 2) naming the known ones if unknown."""
    endpoint = DLF_ENDPOINTS.get(region.strip())
    if endpoint is None:
        raise UsageError(_unknown(region, DLF_ENDPOINTS))
    return endpoint


def iam_endpoint(region: str) -> str:
    """The IAM endpoint for a region id: its own host, else the SDK's global fallback.

    A region id that is not a DLF region either is a usage error, as in `dlf_endpoint`.
    """
    region = region.strip()
    if region not in IAM_ENDPOINTS and region not in DLF_ENDPOINTS:
        raise UsageError(_unknown(region, DLF_ENDPOINTS))
    return IAM_ENDPOINTS.get(region, IAM_DEFAULT)


def _unknown(region: str, known: dict[str, str]) -> str:
    close = difflib.get_close_matches(region.strip().lower(), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"--region: unknown region id {region!r}{hint}; known regions: "
        f"{', '.join(sorted(known))}. For a region not listed, give --endpoint URL."
    )
